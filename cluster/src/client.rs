//! `--ballista df://HOST:PORT`: sessions that plan here and execute on a cluster.
//!
//! [`Ballista`] is the [`Remote`] a [`proxima_engine::SessionFactory`] applies to each
//! session's state before anything is registered on it (Ballista replaces a state's
//! scalar functions with its own when it upgrades it), so tables, views, Proxima's
//! functions and the access rule all land on the upgraded state: a query is planned, and
//! checked, here, and its logical plan goes to the scheduler with Proxima's codecs.

use std::sync::Arc;

use ballista::prelude::SessionConfigExt;
use ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED;
use ballista_core::extension::SessionStateExt;
use ballista_core::planner::BallistaQueryPlanner;
use datafusion::catalog::Session;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion_proto::protobuf::LogicalPlanNode;
use proxima_engine::Remote;
use proxima_engine::session::Node;

use crate::codec::{LogicalCodec, PhysicalCodec};

/// A cluster's scheduler, as sessions reach it.
#[derive(Debug, Clone)]
pub struct Ballista {
    /// `http://host:port` of the scheduler.
    scheduler: String,
    host: String,
    port: u16,
}

impl Ballista {
    /// The scheduler at `url` (`df://HOST:PORT`).
    pub fn new(url: &str) -> Result<Self, crate::Error> {
        let invalid = |why: &str| crate::Error::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if parsed.scheme() != "df" {
            return Err(invalid("the scheme must be df://"));
        }
        let host = parsed.host_str().ok_or_else(|| invalid("no host"))?;
        let port = parsed.port().ok_or_else(|| invalid("no port"))?;
        Ok(Self {
            scheduler: format!("http://{host}:{port}"),
            host: host.to_string(),
            port,
        })
    }

    /// The scheduler's host and port.
    pub fn host_and_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// The scheduler's `http://host:port`.
    pub fn scheduler(&self) -> &str {
        &self.scheduler
    }
}

impl Remote for Ballista {
    fn upgrade(&self, state: SessionState) -> proxima_engine::Result<SessionState> {
        let Some(node) = state.config().get_extension::<Node>() else {
            return Err(datafusion::error::DataFusionError::Configuration(
                "a session without its node: only a SessionFactory's sessions run on a cluster".into(),
            )
            .into());
        };
        let config = crate::node::with_node(state.config().clone(), node.0.clone())
            .upgrade_for_ballista()
            // Ballista 55's adaptive planner loses track of a stage whose task runs only
            // part of a union over an empty table (the task's metrics no longer match the
            // stage's, and the job never ends); the static planner runs it. A session may
            // still SET it back on.
            .set_bool(BALLISTA_ADAPTIVE_PLANNER_ENABLED, false);
        let planner = Planner {
            ballista: BallistaQueryPlanner::with_extension(
                self.scheduler.clone(),
                config.ballista_config(),
                Arc::new(LogicalCodec::new(None)),
            ),
        };
        let config = config
            .with_ballista_query_planner(Arc::new(planner))
            .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::new(None)))
            .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()));
        let state = SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .build();
        Ok(state.upgrade_for_ballista(self.scheduler.clone())?)
    }
}

/// Ballista's planner, after what must happen where the plan is made
/// ([`proxima_engine::remote_plan`]): the policy's relations (analysts' aggregates,
/// tracers' scoped tables and guarded traces) and `trace_case(…)` are resolved through the
/// caller's session and travel as what they stand for; a plan that reads the audit log runs
/// here.
#[derive(Debug)]
struct Planner {
    ballista: BallistaQueryPlanner<LogicalPlanNode>,
}

#[async_trait::async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // The audit log is a folder of this machine: a plan reading it runs here; so does an
        // EXPLAIN, which then shows the policy's relations sealed, as on one machine.
        let explain = matches!(logical_plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
        if explain || proxima_engine::remote_plan::reads_local_only(logical_plan) {
            return DefaultPhysicalPlanner::default()
                .create_physical_plan(logical_plan, session_state)
                .await;
        }
        if let Some(state) = session_state.as_any().downcast_ref::<SessionState>()
            && let Some(resolved) = proxima_engine::remote_plan::resolve(logical_plan, state).await?
        {
            return self.ballista.create_physical_plan(&resolved, session_state).await;
        }
        self.ballista.create_physical_plan(logical_plan, session_state).await
    }
}
