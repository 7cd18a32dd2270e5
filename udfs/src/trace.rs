//! `trace_contacts(index_uuid, at [, max_order])`: time-respecting contact tracing.
//!
//! Level 0 is the index `i` at reference time `T`. With the session's windows
//! `W_back` (`proxima.trace.lookback`, 96 h) and `W_high`
//! (`proxima.trace.high_window`, 48 h), all bounds inclusive:
//!
//! - Level 1: every device `v ≠ i` with an encounter with `i` at `t`,
//!   `T − W_back ≤ t ≤ T`. `exposed_at(v)` is the earliest such `t`,
//!   `last_contact_at(v)` the latest, `via(v) = i`. Priority `high` if
//!   `last_contact_at ≥ T − W_high`, else `medium`.
//! - Level k ≥ 2 (while k ≤ `max_order`, default 2, at most 5): every device
//!   not in an earlier level with an encounter with some `u` of level k − 1 at
//!   `t`, where `t ≥ exposed_at(u)` (the contact could already have been
//!   infected) and `T − W_high ≤ t ≤ T`. `exposed_at(v)` is the earliest such
//!   `t` and `via(v)` the `u` giving it (ties: the smallest `u` as text);
//!   `last_contact_at(v)` is the latest such `t` over all qualifying `u`.
//!   Priority `medium` at level 2, `low` deeper.
//!
//! Each device appears once, at its lowest level. Encounters are those of the
//! `encounters` view, so whatever the view excludes (unknown identifiers,
//! self-sightings) tracing ignores. Each hop asks the task's
//! [`EncounterLookup`] (a session-config extension the engine installs: page
//! -index lookups in the observation files and their companions, a scan of the
//! day's files where they do not cover it) for the frontier's encounters
//! within the hop's window.
//!
//! The work happens in [`ContactTraceExec::execute`], with one output
//! partition, from nothing but the plain request it holds and the
//! [`TaskContext`] it is given, so the plan can be shipped to a Ballista
//! executor: [`ContactTraceCodec`] serialises it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ScalarValue, exec_err, internal_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};

use crate::args::{constant, simplifier};
use crate::options::ProximaOptions;

const NAME: &str = "trace_contacts";
/// Deepest level a trace may reach.
pub const MAX_ORDER: i64 = 5;
/// Level traced when `max_order` is not given.
pub const DEFAULT_ORDER: i64 = 2;

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The columns `trace_contacts` returns, in order.
pub fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("contact", DataType::Utf8, false),
        Field::new("contact_order", DataType::Int32, false),
        Field::new("priority", DataType::Utf8, false),
        Field::new("exposed_at", timestamp_type(), false),
        Field::new("last_contact_at", timestamp_type(), false),
        Field::new("via", DataType::Utf8, false),
    ]))
}

/// What to trace, as the arguments gave it, with the session's windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRequest {
    /// The index case's device UUID (canonical lowercase).
    pub index: String,
    /// T, in microseconds since the epoch.
    pub at: i64,
    /// Deepest level (1..=5).
    pub max_order: u32,
    /// W_high in microseconds.
    pub high_window: i64,
    /// W_back in microseconds.
    pub lookback: i64,
    /// With `proxima.trace.require_mutual`, the mutual window in microseconds: an encounter
    /// counts only if both devices reported each other this close in time.
    pub mutual_window: Option<i64>,
}

/// One traced contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The contact's device UUID.
    pub contact: String,
    /// Its level (1 for a direct contact).
    pub order: u32,
    /// Earliest qualifying encounter, µs.
    pub exposed_at: i64,
    /// Latest qualifying encounter, µs.
    pub last_contact_at: i64,
    /// The device of the level above it met.
    pub via: String,
}

impl Contact {
    /// `high`, `medium` or `low`, by the rules in the module documentation.
    pub fn priority(&self, request: &TraceRequest) -> &'static str {
        match self.order {
            1 if self.last_contact_at >= request.at.saturating_sub(request.high_window) => "high",
            1 | 2 => "medium",
            _ => "low",
        }
    }
}

/// An encounter: `a` met `b` at `at` (µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The device whose contacts are looked up.
    pub a: String,
    /// The device it met.
    pub b: String,
    /// When, µs.
    pub at: i64,
    /// Whether `a` reported the sighting (`a` heard `b`); else `b` heard `a`.
    pub a_heard: bool,
}

/// The encounters among `edges` that the other side corroborates: an edge stays if the
/// same two devices have a sighting in the other direction at most `window` (µs) apart.
/// One-sided sightings (a phone that claims to have heard another, which never heard it)
/// are dropped.
pub fn mutual(edges: Vec<Edge>, window: i64) -> Vec<Edge> {
    // For each ordered pair and direction, the sorted times of its sightings.
    let mut times: HashMap<(&str, &str, bool), Vec<i64>> = HashMap::new();
    for edge in &edges {
        times.entry((&edge.a, &edge.b, edge.a_heard)).or_default().push(edge.at);
    }
    for list in times.values_mut() {
        list.sort_unstable();
    }
    let corroborated: Vec<bool> = edges
        .iter()
        .map(|edge| {
            times
                .get(&(edge.a.as_str(), edge.b.as_str(), !edge.a_heard))
                .is_some_and(|other| {
                    let first = other.partition_point(|&t| t < edge.at.saturating_sub(window));
                    other.get(first).is_some_and(|&t| t <= edge.at.saturating_add(window))
                })
        })
        .collect();
    edges
        .into_iter()
        .zip(corroborated)
        .filter_map(|(edge, keep)| keep.then_some(edge))
        .collect()
}

/// What an [`EncounterLookup`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Encounters of the asked devices within the asked bounds, on every day.
    pub edges: Vec<Edge>,
    /// Days (since 1970-01-01) the index did not cover, answered by the slow path (a scan
    /// of the day's observations): a healthy store has none.
    pub uncovered_days: Vec<i32>,
}

/// Rows and bytes an [`EncounterLookup`] has read since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupCounters {
    /// Rows decoded.
    pub rows: u64,
    /// Bytes fetched from storage (file footers included).
    pub bytes: u64,
    /// Days the index did not cover, answered by reading the whole day.
    pub scanned_days: u64,
    /// Sightings of a rotating identifier heard outside its epoch (replays), refused.
    pub replayed_identifiers: u64,
    /// Sightings of 16 bytes no identifier key issued (forged, tampered with, of a
    /// forgotten or foreign key, or an RPI of no known key), refused.
    pub unknown_identifiers: u64,
}

/// Where `trace_contacts` gets encounters (the same rows as the `encounters` view, found
/// faster) and registered devices: the one in the task's session config
/// ([`EncounterLookupExtension`]).
#[async_trait]
pub trait EncounterLookup: fmt::Debug + Send + Sync {
    /// Encounters with `a` among `devices` (sorted, distinct) and `from ≤ at ≤ to` (µs).
    async fn encounters(&self, devices: &[String], from: i64, to: i64) -> Result<Lookup>;

    /// Whether `device` (a canonical UUID) is registered.
    async fn is_registered(&self, device: &str) -> Result<bool>;

    /// What the lookups have read so far.
    fn counters(&self) -> LookupCounters;
}

/// The session config extension (`SessionConfig::with_extension`) that holds a session's lookup.
#[derive(Debug, Clone)]
pub struct EncounterLookupExtension(pub Arc<dyn EncounterLookup>);

/// The level-1 contacts of `request.index` among `edges` (all with `a` = index, in the window).
pub fn first_level(request: &TraceRequest, edges: &[Edge]) -> Vec<Contact> {
    let mut contacts: BTreeMap<&str, Contact> = BTreeMap::new();
    for edge in edges.iter().filter(|e| e.a == request.index && e.b != request.index) {
        let contact = contacts.entry(&edge.b).or_insert_with(|| Contact {
            contact: edge.b.clone(),
            order: 1,
            exposed_at: edge.at,
            last_contact_at: edge.at,
            via: request.index.clone(),
        });
        contact.exposed_at = contact.exposed_at.min(edge.at);
        contact.last_contact_at = contact.last_contact_at.max(edge.at);
    }
    contacts.into_values().collect()
}

/// The level-`order` contacts reached from `frontier` (the level above) through `edges`,
/// skipping devices already `seen` in a lower level.
pub fn next_level(order: u32, frontier: &[Contact], seen: &HashSet<String>, edges: &[Edge]) -> Vec<Contact> {
    let exposed: HashMap<&str, i64> = frontier.iter().map(|c| (c.contact.as_str(), c.exposed_at)).collect();
    let mut contacts: BTreeMap<&str, Contact> = BTreeMap::new();
    for edge in edges {
        let Some(&exposed_at) = exposed.get(edge.a.as_str()) else {
            continue;
        };
        if edge.at < exposed_at || seen.contains(&edge.b) || exposed.contains_key(edge.b.as_str()) {
            continue;
        }
        let contact = contacts.entry(&edge.b).or_insert_with(|| Contact {
            contact: edge.b.clone(),
            order,
            exposed_at: edge.at,
            last_contact_at: edge.at,
            via: edge.a.clone(),
        });
        if (edge.at, edge.a.as_str()) < (contact.exposed_at, contact.via.as_str()) {
            contact.exposed_at = edge.at;
            contact.via = edge.a.clone();
        }
        contact.last_contact_at = contact.last_contact_at.max(edge.at);
    }
    contacts.into_values().collect()
}

/// The table function registered as `trace_contacts`.
#[derive(Debug, Default)]
pub struct TraceContacts;

impl TableFunctionImpl for TraceContacts {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        Ok(TraceCall::parse(&args)?.into_table())
    }
}

/// The arguments of one `trace_contacts(…)` call, checked: what a caller that guards the
/// function (a tracer's purpose) looks at before the trace runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCall {
    /// The index device, lowercase.
    pub index: String,
    /// When the index became a case, microseconds since the epoch (UTC).
    pub at: i64,
    /// How many levels of contacts.
    pub max_order: u32,
}

impl TraceCall {
    /// The call `table` stands for, if it is a `trace_contacts(…)` relation (what a
    /// cluster's codec sends instead of the relation).
    pub fn of(table: &dyn TableProvider) -> Option<Self> {
        table.downcast_ref::<ContactTraceTable>().map(|t| Self {
            index: t.index.clone(),
            at: t.at,
            max_order: t.max_order,
        })
    }

    /// The relation the call stands for.
    pub fn into_table(self) -> Arc<dyn TableProvider> {
        Arc::new(ContactTraceTable {
            index: self.index,
            at: self.at,
            max_order: self.max_order,
        })
    }

    /// Folds and checks the call's arguments.
    pub fn parse(args: &TableFunctionArgs) -> Result<Self> {
        let exprs = args.exprs();
        if !(2..=3).contains(&exprs.len()) {
            return plan_err!(
                "{NAME}(index_uuid, at [, max_order]) takes 2 or 3 arguments, got {}",
                exprs.len()
            );
        }
        let simplifier = simplifier(args.session());
        let index = match constant(NAME, 1, "index_uuid", &exprs[0], &simplifier)? {
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => s,
            other => return plan_err!("{NAME}: argument 1 (index_uuid) must be a device UUID as text, got {other}"),
        };
        if !is_uuid(&index) {
            return plan_err!(
                "{NAME}: argument 1 (index_uuid): '{index}' is not a device UUID (8-4-4-4-12 hex digits)"
            );
        }
        let at = match constant(NAME, 2, "at", &exprs[1], &simplifier)? {
            value if value.is_null() => return plan_err!("{NAME}: argument 2 (at) must not be NULL"),
            value @ (ScalarValue::Utf8(_) | ScalarValue::Utf8View(_) | ScalarValue::LargeUtf8(_)) => {
                match value.cast_to(&timestamp_type()) {
                    Ok(ScalarValue::TimestampMicrosecond(Some(v), _)) => v,
                    _ => {
                        return plan_err!(
                            "{NAME}: argument 2 (at): {value} is not a timestamp such as '2026-11-29T12:00:00Z'"
                        );
                    }
                }
            }
            value @ (ScalarValue::TimestampSecond(..)
            | ScalarValue::TimestampMillisecond(..)
            | ScalarValue::TimestampMicrosecond(..)
            | ScalarValue::TimestampNanosecond(..)) => match value.cast_to(&timestamp_type()) {
                Ok(ScalarValue::TimestampMicrosecond(Some(v), _)) => v,
                _ => return plan_err!("{NAME}: argument 2 (at): {value} is out of range"),
            },
            other => return plan_err!("{NAME}: argument 2 (at) must be a timestamp or RFC 3339 text, got {other}"),
        };
        let max_order = match exprs.get(2) {
            None => DEFAULT_ORDER,
            Some(expr) => match constant(NAME, 3, "max_order", expr, &simplifier)?.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(v))) if (1..=MAX_ORDER).contains(&v) => v,
                Ok(ScalarValue::Int64(Some(v))) => {
                    return plan_err!("{NAME}: argument 3 (max_order) must be between 1 and {MAX_ORDER}, got {v}");
                }
                _ => return plan_err!("{NAME}: argument 3 (max_order) must be an integer between 1 and {MAX_ORDER}"),
            },
        };
        Ok(Self {
            index: index.to_ascii_lowercase(),
            at,
            max_order: max_order as u32,
        })
    }
}

/// Folds argument `position` (from 1, called `name`) of a call to the table function
/// `function` to a constant, or says it must be one: for functions that take their
/// arguments as `trace_contacts` does.
pub fn constant_argument(function: &str, args: &TableFunctionArgs, position: usize, name: &str) -> Result<ScalarValue> {
    let Some(expr) = args.exprs().get(position - 1) else {
        return plan_err!("{function}: argument {position} ({name}) is missing");
    };
    constant(function, position, name, expr, &simplifier(args.session()))
}

/// Whether `value` is a UUID written 8-4-4-4-12 in hex digits.
pub fn is_uuid(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The relation a `trace_contacts(…)` call stands for.
#[derive(Debug)]
struct ContactTraceTable {
    index: String,
    at: i64,
    max_order: u32,
}

#[async_trait]
impl TableProvider for ContactTraceTable {
    fn schema(&self) -> SchemaRef {
        output_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let options = state
            .config_options()
            .extensions
            .get::<ProximaOptions>()
            .cloned()
            .unwrap_or_default();
        let micros = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let request = TraceRequest {
            index: self.index.clone(),
            at: self.at,
            max_order: self.max_order,
            high_window: micros(options.high_window),
            lookback: micros(options.lookback),
            mutual_window: options.require_mutual.then(|| micros(options.mutual_window)),
        };
        Ok(Arc::new(ContactTraceExec::new(request, projection.cloned())?))
    }
}

/// Runs one trace: a lookup of the frontier's encounters per level. It holds plain data
/// only (the request and the projection), so it can be serialised ([`ContactTraceCodec`])
/// and run wherever its [`TaskContext`] carries an [`EncounterLookupExtension`].
pub struct ContactTraceExec {
    request: TraceRequest,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ContactTraceExec {
    /// The plan of one trace, returning the `projection` of [`output_schema`].
    pub fn new(request: TraceRequest, projection: Option<Vec<usize>>) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(output_schema().project(p)?),
            None => output_schema(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(Self {
            request,
            projection,
            schema,
            properties,
        })
    }

    /// What it traces.
    pub fn request(&self) -> &TraceRequest {
        &self.request
    }

    /// The columns it returns, as indexes into [`output_schema`].
    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }
}

impl fmt::Debug for ContactTraceExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContactTraceExec")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl DisplayAs for ContactTraceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let r = &self.request;
        write!(
            f,
            "ContactTraceExec: index={}, at={}, max_order={}, lookback={}s, high_window={}s",
            r.index,
            r.at,
            r.max_order,
            r.lookback / 1_000_000,
            r.high_window / 1_000_000
        )
    }
}

impl ExecutionPlan for ContactTraceExec {
    fn name(&self) -> &str {
        "ContactTraceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("ContactTraceExec has no children")
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("ContactTraceExec has one partition, asked for {partition}");
        }
        let Some(lookup) = context.session_config().get_extension::<EncounterLookupExtension>() else {
            return exec_err!(
                "{NAME}: this session has no encounter lookup (Proxima's sessions install one; \
                 on a cluster, each executor's session builder must)"
            );
        };
        let (request, projection) = (self.request.clone(), self.projection.clone());
        let stream = futures::stream::once(async move {
            let batch = contacts_batch(&request, &trace(lookup.0.as_ref(), &request).await?)?;
            match projection {
                Some(p) => Ok(batch.project(&p)?),
                None => Ok(batch),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// Runs the trace with `lookup`.
async fn trace(lookup: &dyn EncounterLookup, request: &TraceRequest) -> Result<Vec<Contact>> {
    if !lookup.is_registered(&request.index).await? {
        return exec_err!("{NAME}: unknown device '{}'", request.index);
    }
    let edges = |devices: Vec<String>, from: i64, to: i64| async move {
        let Some(window) = request.mutual_window else {
            return Ok::<_, datafusion::error::DataFusionError>(lookup.encounters(&devices, from, to).await?.edges);
        };
        // The other side's report may fall just outside the window.
        let wider = lookup
            .encounters(&devices, from.saturating_sub(window), to.saturating_add(window))
            .await?
            .edges;
        let mut edges = mutual(wider, window);
        edges.retain(|e| (from..=to).contains(&e.at));
        Ok(edges)
    };
    let first = edges(
        vec![request.index.clone()],
        request.at.saturating_sub(request.lookback),
        request.at,
    )
    .await?;
    let mut level = first_level(request, &first);
    let mut seen: HashSet<String> = HashSet::from([request.index.clone()]);
    let mut contacts = Vec::new();
    for order in 2..=request.max_order {
        if level.is_empty() {
            break;
        }
        seen.extend(level.iter().map(|c| c.contact.clone()));
        // `level` is sorted by contact and distinct (built from a BTreeMap).
        let frontier: Vec<String> = level.iter().map(|c| c.contact.clone()).collect();
        let found = edges(frontier, request.at.saturating_sub(request.high_window), request.at).await?;
        let next = next_level(order, &level, &seen, &found);
        contacts.append(&mut level);
        level = next;
    }
    contacts.append(&mut level);
    Ok(contacts)
}

fn contacts_batch(request: &TraceRequest, contacts: &[Contact]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            contacts.iter().map(|c| c.contact.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(contacts.iter().map(|c| c.order as i32))),
        Arc::new(StringArray::from_iter_values(
            contacts.iter().map(|c| c.priority(request)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(contacts.iter().map(|c| c.exposed_at)).with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(contacts.iter().map(|c| c.last_contact_at))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(contacts.iter().map(|c| c.via.as_str()))),
    ];
    debug_assert!(columns.iter().all(|c| c.null_count() == 0));
    Ok(RecordBatch::try_new(output_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    fn edge(a: &str, b: &str, at: i64, a_heard: bool) -> Edge {
        Edge {
            a: a.into(),
            b: b.into(),
            at,
            a_heard,
        }
    }

    #[test]
    fn only_sightings_the_other_side_reported_too_are_mutual() {
        let edges = vec![
            // a and b heard each other 4 minutes apart: both count.
            edge("a", "b", 0, true),
            edge("a", "b", 4 * MINUTE, false),
            // a claims to have heard s; s never heard a (a forged, one-sided sighting).
            edge("a", "s", 0, true),
            // s claims to have heard a: one-sided again, whatever the time.
            edge("a", "s", 10 * MINUTE, false),
            // a and d heard each other 6 minutes apart: too far.
            edge("a", "d", 0, true),
            edge("a", "d", 6 * MINUTE, false),
            // Exactly 5 minutes apart: inclusive.
            edge("a", "e", 20 * MINUTE, false),
            edge("a", "e", 25 * MINUTE, true),
        ];
        let kept = mutual(edges, 5 * MINUTE);
        let pairs: Vec<(&str, i64)> = kept.iter().map(|e| (e.b.as_str(), e.at / MINUTE)).collect();
        assert_eq!(pairs, [("b", 0), ("b", 4), ("e", 20), ("e", 25)]);
    }
}
