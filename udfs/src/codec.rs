//! Proxima's execution plans on the wire, for a cluster (Apache DataFusion Ballista).
//!
//! DataFusion's protobuf serialisation knows its own plans; a plan of ours
//! travels through [`ContactTraceCodec`], a `PhysicalExtensionCodec` that
//! writes [`ContactTraceExec`]'s plain data (the request and the projection) as
//! JSON and rebuilds the plan from it. Nothing else is needed on the other
//! side: the plan finds its encounter lookup in the executing task's session
//! config.

use std::sync::Arc;

use datafusion::common::{DataFusionError, internal_err, not_impl_err};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::trace::{ContactTraceExec, TraceRequest};

/// Serialises [`ContactTraceExec`] (and refuses any other plan it does not know).
#[derive(Debug, Default, Clone, Copy)]
pub struct ContactTraceCodec;

/// What a [`ContactTraceExec`] is made of.
#[derive(Debug, Serialize, Deserialize)]
struct TraceNode {
    index: String,
    at: i64,
    max_order: u32,
    high_window: i64,
    lookback: i64,
    #[serde(default)]
    mutual_window: Option<i64>,
    projection: Option<Vec<usize>>,
}

impl PhysicalExtensionCodec for ContactTraceCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return internal_err!("ContactTraceExec has no inputs, got {}", inputs.len());
        }
        let node: TraceNode = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Internal(format!("not a serialised ContactTraceExec: {e}")))?;
        let request = TraceRequest {
            index: node.index,
            at: node.at,
            max_order: node.max_order,
            high_window: node.high_window,
            lookback: node.lookback,
            mutual_window: node.mutual_window,
        };
        Ok(Arc::new(ContactTraceExec::new(request, node.projection)?))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(exec) = node.downcast_ref::<ContactTraceExec>() else {
            return not_impl_err!("ContactTraceCodec cannot serialise {}", node.name());
        };
        let request = exec.request();
        let node = TraceNode {
            index: request.index.clone(),
            at: request.at,
            max_order: request.max_order,
            high_window: request.high_window,
            lookback: request.lookback,
            mutual_window: request.mutual_window,
            projection: exec.projection().map(<[usize]>::to_vec),
        };
        serde_json::to_writer(buf, &node).map_err(|e| DataFusionError::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use async_trait::async_trait;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionConfig;
    use datafusion_proto::bytes::{
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };

    use super::*;
    use crate::trace::{Edge, EncounterLookup, EncounterLookupExtension, Lookup, LookupCounters};

    const HOUR: i64 = 3_600_000_000;

    /// Encounters held in memory: i met a at T − 30 h and b at T − 60 h; a met c at T − 10 h.
    #[derive(Debug)]
    struct Fixed(Vec<Edge>);

    fn fixed(t: i64) -> Fixed {
        let edge = |a: &str, b: &str, at: i64, a_heard: bool| Edge {
            a: format!("00000000-0000-4000-8000-0000000000{a}"),
            b: format!("00000000-0000-4000-8000-0000000000{b}"),
            at,
            a_heard,
        };
        let mut edges = Vec::new();
        for (x, y, at) in [
            ("01", "0a", t - 30 * HOUR),
            ("01", "0b", t - 60 * HOUR),
            ("0a", "0c", t - 10 * HOUR),
        ] {
            edges.push(edge(x, y, at, true));
            edges.push(edge(y, x, at, false));
        }
        Fixed(edges)
    }

    #[async_trait]
    impl EncounterLookup for Fixed {
        async fn encounters(&self, devices: &[String], from: i64, to: i64) -> Result<Lookup> {
            let edges = self
                .0
                .iter()
                .filter(|e| devices.contains(&e.a) && (from..=to).contains(&e.at))
                .cloned()
                .collect();
            Ok(Lookup {
                edges,
                uncovered_days: vec![],
            })
        }

        async fn is_registered(&self, device: &str) -> Result<bool> {
            let known: HashSet<&str> = self.0.iter().map(|e| e.a.as_str()).collect();
            Ok(known.contains(device))
        }

        fn counters(&self) -> LookupCounters {
            LookupCounters::default()
        }
    }

    fn task(lookup: Option<Fixed>) -> Arc<TaskContext> {
        let mut config = SessionConfig::new();
        if let Some(lookup) = lookup {
            config = config.with_extension(Arc::new(EncounterLookupExtension(Arc::new(lookup))));
        }
        SessionStateBuilder::new().with_config(config).build().task_ctx()
    }

    #[tokio::test]
    async fn a_trace_plan_survives_the_wire_and_runs_from_its_task() {
        let t = 1_795_000_000_000_000;
        let request = TraceRequest {
            index: "00000000-0000-4000-8000-000000000001".into(),
            at: t,
            max_order: 2,
            high_window: 48 * HOUR,
            lookback: 96 * HOUR,
            mutual_window: None,
        };
        let plan: Arc<dyn ExecutionPlan> =
            Arc::new(ContactTraceExec::new(request.clone(), Some(vec![0, 1, 2, 5])).unwrap());
        let bytes = physical_plan_to_bytes_with_extension_codec(Arc::clone(&plan), &ContactTraceCodec).unwrap();
        // Decoded where no planner ran: only a task context with a lookup.
        let remote = task(Some(fixed(t)));
        let decoded = physical_plan_from_bytes_with_extension_codec(&bytes, &remote, &ContactTraceCodec).unwrap();
        let exec = decoded.downcast_ref::<ContactTraceExec>().expect("a ContactTraceExec");
        assert_eq!(exec.request(), &request);
        assert_eq!(exec.projection(), Some(&[0, 1, 2, 5][..]));
        let here = collect(plan, task(Some(fixed(t)))).await.unwrap();
        let there = collect(decoded, remote).await.unwrap();
        let text = pretty_format_batches(&there).unwrap().to_string();
        assert_eq!(pretty_format_batches(&here).unwrap().to_string(), text);
        // i's contacts a (high: 30 h ago) and b (medium: 60 h ago), then c through a.
        for expected in [
            "0000000000a | 1             | high",
            "0000000000b | 1             | medium",
            "0000000000c | 2             | medium",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }

        // Without a lookup in its task, the plan says so instead of guessing.
        let err = collect(
            physical_plan_from_bytes_with_extension_codec(&bytes, &task(None), &ContactTraceCodec).unwrap(),
            task(None),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("no encounter lookup"), "{err}");
    }
}
