//! What carries Proxima's relations and plans to the cluster.
//!
//! Ballista ships a query's logical plan from the client to the scheduler and each stage's
//! physical plan to the executors, through datafusion-proto and a pair of extension codecs.
//! Ballista's own codecs know its nodes and DataFusion's built-in tables; ours know
//! Proxima's, and hand everything else to Ballista's:
//!
//! - a store table ([`StoreTable`]) travels as its name and is rebuilt on the scheduler
//!   by the scheduler's [`SessionFactory`], with the store's decryption settings
//!   (datafusion-proto would send a plain listing table without them);
//! - a `trace_contacts(…)` relation travels as its call ([`TraceCall`]), and its plan,
//!   `ContactTraceExec`, as its request ([`ContactTraceCodec`]);
//! - a small in-memory table (what `en_rpis(…)` returns) travels as Arrow IPC.
//!
//! Anything else is refused with an error that names it, rather than sent without its
//! rules: the policy's relations (a tracer's scoped tables, an analyst's aggregates) never
//! reach a codec, since the caller's session resolves them first
//! (`proxima_engine::remote_plan`), and a query of the audit log runs where it is.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, TableReference, not_impl_err, plan_err};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use proxima_engine::table::StoreTable;
use proxima_engine::{SessionFactory, Table};
use proxima_udfs::codec::ContactTraceCodec;
use proxima_udfs::trace::{ContactTraceExec, TraceCall};
use serde::{Deserialize, Serialize};

/// What starts every node of ours. Ballista's nodes are protobuf messages whose first byte
/// is a field tag of a length-delimited field (low bits `010`) or above 0x80; `P` (0x50)
/// is neither, so the two can never be confused.
const TAG: &[u8] = b"PRX1";

/// The most an in-memory table may weigh on the wire.
const MAX_MEMORY_TABLE_BYTES: usize = 16 << 20;

/// One of Proxima's relations, as it travels.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Relation {
    /// One of the store's tables, by name.
    Store { table: String },
    /// A `trace_contacts(index, at, max_order)` call.
    Trace { index: String, at: i64, max_order: u32 },
    /// A small in-memory table, its batches as an Arrow IPC stream.
    Memory { ipc: Vec<u8> },
}

/// Proxima's logical codec: the one the client, the scheduler and every executor install.
/// Only the scheduler decodes tables, with its [`SessionFactory`].
#[derive(Debug, Default)]
pub struct LogicalCodec {
    factory: Option<SessionFactory>,
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalCodec {
    /// A codec that rebuilds store tables with `factory` (the scheduler's).
    pub fn new(factory: Option<SessionFactory>) -> Self {
        Self {
            factory,
            inner: BallistaLogicalExtensionCodec::default(),
        }
    }
}

/// The name a relation the cluster cannot run shows in the error.
fn describe(table_ref: &TableReference, node: &dyn TableProvider) -> String {
    let type_name = format!("{node:?}");
    let kind = type_name.split([' ', '{', '(']).next().unwrap_or("a table");
    format!("'{table_ref}' ({kind})")
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let Some(body) = buf.strip_prefix(TAG) else {
            return self.inner.try_decode_table_provider(buf, table_ref, schema, ctx);
        };
        let relation: Relation = serde_json::from_slice(body)
            .map_err(|e| DataFusionError::Internal(format!("'{table_ref}' is not a Proxima relation: {e}")))?;
        match relation {
            Relation::Store { table } => {
                let Some(factory) = &self.factory else {
                    return plan_err!("'{table_ref}': only a scheduler started with a store reads tables");
                };
                let Some(table) = Table::from_name(&table) else {
                    return plan_err!(
                        "'{table_ref}': no table '{table}' in this version of Proxima (the client and the \
                         scheduler must run the same version)"
                    );
                };
                factory
                    .table_provider(table)
                    .map_err(|e| DataFusionError::External(Box::new(e)))
            }
            Relation::Trace { index, at, max_order } => Ok(TraceCall { index, at, max_order }.into_table()),
            Relation::Memory { ipc } => {
                let reader = StreamReader::try_new(ipc.as_slice(), None)?;
                let schema = reader.schema();
                let batches = reader.collect::<Result<Vec<_>, _>>()?;
                Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
            }
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let relation = if let Some(table) = node.downcast_ref::<StoreTable>() {
            Relation::Store {
                table: table.table().name().to_string(),
            }
        } else if let Some(call) = TraceCall::of(node.as_ref()) {
            Relation::Trace {
                index: call.index,
                at: call.at,
                max_order: call.max_order,
            }
        } else if let Some(memory) = node.downcast_ref::<MemTable>() {
            Relation::Memory {
                ipc: memory_ipc(table_ref, memory)?,
            }
        } else {
            return not_impl_err!(
                "{} cannot run on the cluster: Proxima sends only the store's tables, views over them, \
                 trace_contacts and en_rpis",
                describe(table_ref, node.as_ref())
            );
        };
        buf.extend_from_slice(TAG);
        serde_json::to_writer(buf, &relation).map_err(|e| DataFusionError::Internal(e.to_string()))
    }

    fn try_decode_file_format(&self, buf: &[u8], ctx: &TaskContext) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(&self, buf: &mut Vec<u8>, node: Arc<dyn FileFormatFactory>) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, _buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        unknown_function("scalar", name, "scheduler")
    }

    fn try_decode_udaf(&self, name: &str, _buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        unknown_function("aggregate", name, "scheduler")
    }

    fn try_decode_udwf(&self, name: &str, _buf: &[u8]) -> Result<Arc<WindowUDF>> {
        unknown_function("window", name, "scheduler")
    }
}

/// The error of a function a node's registry lacks (the codec is asked only then).
fn unknown_function<T>(kind: &str, name: &str, node: &str) -> Result<T> {
    plan_err!(
        "the {node} has no {kind} function '{name}': every node of a cluster must run the same version of \
         Proxima (and the same identifier keys)"
    )
}

/// The batches of an in-memory table as an Arrow IPC stream, refused above
/// [`MAX_MEMORY_TABLE_BYTES`].
fn memory_ipc(table_ref: &TableReference, memory: &MemTable) -> Result<Vec<u8>> {
    let mut ipc = Vec::new();
    let mut writer = StreamWriter::try_new(&mut ipc, &memory.schema())?;
    for partition in &memory.batches {
        let batches = partition
            .try_read()
            .map_err(|_| DataFusionError::Internal(format!("'{table_ref}' is being written to")))?;
        for batch in batches.iter() {
            writer.write(batch)?;
            if writer.get_ref().len() > MAX_MEMORY_TABLE_BYTES {
                return plan_err!(
                    "'{table_ref}' holds over {} MiB: too much to send to the cluster",
                    MAX_MEMORY_TABLE_BYTES >> 20
                );
            }
        }
    }
    writer.finish()?;
    drop(writer);
    Ok(ipc)
}

/// Proxima's physical codec: `ContactTraceExec` ([`ContactTraceCodec`]) and Ballista's
/// nodes.
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match buf.strip_prefix(TAG) {
            Some(body) => ContactTraceCodec.try_decode(body, inputs, ctx, proto_converter),
            None => self.inner.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if node.downcast_ref::<ContactTraceExec>().is_some() {
            buf.extend_from_slice(TAG);
            return ContactTraceCodec.try_encode(node, buf, proto_converter);
        }
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, _buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        unknown_function("scalar", name, "executor")
    }

    fn try_decode_udaf(&self, name: &str, _buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        unknown_function("aggregate", name, "executor")
    }

    fn try_decode_udwf(&self, name: &str, _buf: &[u8]) -> Result<Arc<WindowUDF>> {
        unknown_function("window", name, "executor")
    }
}
