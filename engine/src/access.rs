//! Who is asking: users' roles and what each role's session may do.
//!
//! Every authenticated caller (Flight SQL today, REST later) becomes a
//! [`Principal`]; [`crate::SessionFactory::session_for`] builds its session and
//! [`Principal::check_statement`] says which kinds of statement it may run over the
//! network and
//! [`Principal::check_settings`] which settings it may change. Per-role catalogs and
//! functions will be decided here too, so there is one place to read.

use std::fmt;
use std::str::FromStr;

use std::time::Duration;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement};
use proxima_udfs::ProximaOptions;

/// A staff or machine role, as given in the users file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs the platform: may also create views and external tables and COPY results.
    Admin,
    /// Traces cases and issues alerts.
    Tracer,
    /// Queries aggregates for public-health analysis.
    Analyst,
    /// Reads the audit trail.
    Auditor,
    /// A thermometer station.
    Station,
    /// A gateway that uploads observations in bulk.
    Ingest,
}

impl Role {
    /// Every role, in documentation order.
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Tracer,
        Role::Analyst,
        Role::Auditor,
        Role::Station,
        Role::Ingest,
    ];

    /// The role's name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tracer => "tracer",
            Role::Analyst => "analyst",
            Role::Auditor => "auditor",
            Role::Station => "station",
            Role::Ingest => "ingest",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
            format!("unknown role '{s}' (roles: {})", names.join(", "))
        })
    }
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name.
    pub name: String,
    /// The user's role.
    pub role: Role,
    /// The OpenID Connect issuer that vouched for the user (`name` is then the token's
    /// subject); `None` for a user of the users file.
    pub issuer: Option<String>,
}

impl Role {
    /// Whether the role may log in to SQL at all: stations and ingest gateways have their
    /// REST routes and nothing else.
    pub fn may_query(self) -> bool {
        !matches!(self, Role::Station | Role::Ingest)
    }
}

impl Principal {
    /// The name as stored with what the principal writes (`cases.reported_by`, readings'
    /// `recorded_by`) and logged: a users-file name as it is, an identity provider's
    /// subject as `oidc:<subject>`, so that neither can pass for the other.
    pub fn qualified_name(&self) -> String {
        match self.issuer {
            Some(_) => format!("oidc:{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Checks a statement this user sends over the network, whatever its role: nothing
    /// that writes (`INSERT`, `UPDATE`, `DELETE`, `COPY … TO`), and no DDL but
    /// `CREATE VIEW` and `DROP VIEW`, which last only for the login (a view's body is
    /// planned against the login's own catalog). So no external table can name a server
    /// file, and nothing a login does outlives it. Looks inside `EXPLAIN` and subqueries.
    pub fn check_statement(&self, plan: &LogicalPlan) -> Result<(), String> {
        let mut refusal = None;
        // The closure never fails, so neither does the walk.
        let _ = plan.apply_with_subqueries(|node| {
            refusal = match node {
                LogicalPlan::Dml(_) => Some("INSERT, UPDATE and DELETE are not run over the network"),
                LogicalPlan::Copy(_) => Some("COPY writes server files and is not run over the network"),
                LogicalPlan::Ddl(DdlStatement::CreateView(view)) if view.or_replace => {
                    Some("CREATE OR REPLACE VIEW is not run over the network: DROP VIEW first")
                }
                LogicalPlan::Ddl(DdlStatement::CreateView(_) | DdlStatement::DropView(_)) => None,
                LogicalPlan::Ddl(_) => {
                    Some("over the network only CREATE VIEW and DROP VIEW run (they last for the login)")
                }
                _ => None,
            };
            Ok(match refusal {
                Some(_) => TreeNodeRecursion::Stop,
                None => TreeNodeRecursion::Continue,
            })
        });
        match refusal {
            Some(why) => Err(format!("{why} (role {})", self.role)),
            None => Ok(()),
        }
    }
}

/// The tables and table functions `plans` read, by name, sorted: what an audit record says
/// a statement touched. A view is planned into what it reads, so its tables are named.
pub fn objects_read(plans: &[LogicalPlan]) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for plan in plans {
        // The closure never fails, so neither does the walk.
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                names.insert(scan.table_name.to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
    names.into_iter().collect()
}

/// `datafusion.*` settings any network role may change: harmless to the server.
const HARMLESS_SETTINGS: &[&str] = &["datafusion.execution.time_zone", "datafusion.execution.batch_size"];
/// The largest batch a login may ask for (rows).
const MAX_BATCH_SIZE: usize = 65_536;

impl Principal {
    /// Checks a `SET` or `RESET` that this user sends over the network (the plan of any
    /// other statement passes). `current` are the session's Proxima settings, and
    /// `max_window` the longest trace window allowed (the retention period).
    ///
    /// - Nobody may change `datafusion.runtime.*` (a new runtime brings a memory pool and a
    ///   spill folder of its own: the limits would be gone) or `datafusion.catalog.*`.
    /// - Every role may change `proxima.trace.*` and `proxima.risk.*` within bounds (trace
    ///   windows at most `max_window`, `high_window` at most `lookback`) and
    ///   [`HARMLESS_SETTINGS`]; only admins may change other `datafusion.*` settings.
    pub fn check_settings(
        &self,
        plan: &LogicalPlan,
        current: &ProximaOptions,
        max_window: Option<Duration>,
    ) -> Result<(), String> {
        let (variable, value) = match plan {
            LogicalPlan::Statement(Statement::SetVariable(set)) => (set.variable.as_str(), Some(set.value.as_str())),
            LogicalPlan::Statement(Statement::ResetVariable(reset)) => (reset.variable.as_str(), None),
            _ => return Ok(()),
        };
        let variable = variable.to_ascii_lowercase();
        let refuse = |why: &str| Err(format!("{variable}: {why}"));
        if variable.starts_with("datafusion.runtime.") || variable.starts_with("datafusion.catalog.") {
            return refuse("server settings are not changed from a session");
        }
        if variable.starts_with("proxima.") {
            let mut options = current.clone();
            match value {
                Some(value) => {
                    datafusion::common::config::ExtensionOptions::set(&mut options, &variable, value)
                        .map_err(|e| e.strip_backtrace())?;
                }
                None => {
                    let defaults = ProximaOptions::default();
                    let entry = datafusion::common::config::ExtensionOptions::entries(&defaults)
                        .into_iter()
                        .find(|e| e.key == variable)
                        .and_then(|e| e.value)
                        .ok_or_else(|| format!("{variable}: no such setting"))?;
                    datafusion::common::config::ExtensionOptions::set(&mut options, &variable, &entry)
                        .map_err(|e| e.strip_backtrace())?;
                }
            }
            if let Some(max) = max_window {
                for (name, window) in [("high_window", options.high_window), ("lookback", options.lookback)] {
                    if window > max {
                        return Err(format!(
                            "proxima.trace.{name}: {} hours is longer than the {} hours of data kept",
                            window.as_secs() / 3600,
                            max.as_secs() / 3600
                        ));
                    }
                }
            }
            if options.high_window > options.lookback {
                return Err(format!(
                    "{variable}: proxima.trace.high_window ({} h) must not be longer than proxima.trace.lookback ({} h)",
                    options.high_window.as_secs() / 3600,
                    options.lookback.as_secs() / 3600
                ));
            }
            return Ok(());
        }
        if HARMLESS_SETTINGS.contains(&variable.as_str()) {
            if variable == "datafusion.execution.batch_size"
                && let Some(value) = value
                && !value
                    .trim_matches('\'')
                    .parse::<usize>()
                    .is_ok_and(|n| (1..=MAX_BATCH_SIZE).contains(&n))
            {
                return refuse(&format!("'{value}' is not a batch size between 1 and {MAX_BATCH_SIZE}"));
            }
            return Ok(());
        }
        if self.role == Role::Admin && variable.starts_with("datafusion.") {
            return Ok(());
        }
        refuse(&format!(
            "role {} may change only proxima.trace.*, proxima.risk.* and {}",
            self.role,
            HARMLESS_SETTINGS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn check(role: Role, sql: &str) -> Result<(), String> {
        let ctx = SessionContext::new();
        let plan = ctx.state().create_logical_plan(sql).await.map_err(|e| e.to_string())?;
        let principal = Principal {
            name: "p".into(),
            role,
            issuer: None,
        };
        let current = ProximaOptions::default();
        principal.check_settings(&plan, &current, Some(Duration::from_secs(21 * 86_400)))
    }

    #[tokio::test]
    async fn network_roles_change_only_their_own_settings() {
        for role in Role::ALL {
            for sql in [
                "RESET datafusion.runtime.memory_limit",
                "SET datafusion.runtime.memory_limit = '100G'",
                "SET DataFusion.Runtime.Temp_Directory = '/tmp'",
                "SET datafusion.catalog.location = 'bad://'",
            ] {
                let err = check(role, sql).await.unwrap_err();
                assert!(err.contains("server settings"), "{role} {sql}: {err}");
            }
            check(role, "SET proxima.trace.lookback = '72 hours'").await.unwrap();
            check(role, "RESET proxima.trace.lookback").await.unwrap();
            check(role, "SET datafusion.execution.time_zone = '+01:00'")
                .await
                .unwrap();
            check(role, "SET datafusion.execution.batch_size = 4096").await.unwrap();
            assert!(
                check(role, "SET datafusion.execution.batch_size = 100000000")
                    .await
                    .is_err()
            );
            let err = check(role, "SET proxima.trace.lookback = '100000000 weeks'")
                .await
                .unwrap_err();
            assert!(err.contains("between 1 second and 60 days"), "{err}");
            let err = check(role, "SET proxima.trace.lookback = '30 days'").await.unwrap_err();
            assert!(err.contains("longer than the 504 hours of data kept"), "{err}");
            let err = check(role, "SET proxima.trace.lookback = '24 hours'")
                .await
                .unwrap_err();
            assert!(err.contains("must not be longer than proxima.trace.lookback"), "{err}");
            check(role, "SELECT 1").await.unwrap();
        }
        let err = check(Role::Analyst, "SET datafusion.optimizer.max_passes = 1")
            .await
            .unwrap_err();
        assert!(err.contains("role analyst may change only"), "{err}");
        check(Role::Admin, "SET datafusion.optimizer.max_passes = 1")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn nothing_over_the_network_writes_or_outlives_the_login() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS SELECT 1 AS x").await.unwrap();
        for role in Role::ALL {
            let principal = Principal {
                name: "p".into(),
                role,
                issuer: None,
            };
            let check = async |sql: &str| {
                let plan = ctx.state().create_logical_plan(sql).await.unwrap();
                principal.check_statement(&plan)
            };
            for sql in [
                "COPY (SELECT 1) TO '/tmp/x.csv' STORED AS CSV",
                "EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv' STORED AS CSV",
                "INSERT INTO t VALUES (2)",
                "CREATE EXTERNAL TABLE secrets STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE TABLE m AS SELECT 1",
                "DROP TABLE t",
                "CREATE SCHEMA s",
                "CREATE OR REPLACE VIEW v AS SELECT 1",
            ] {
                let err = check(sql).await.unwrap_err();
                assert!(err.contains("network"), "{role} {sql}: {err}");
            }
            check("CREATE VIEW v AS SELECT x FROM t").await.unwrap();
            check("DROP VIEW IF EXISTS v").await.unwrap();
            check("SELECT * FROM t WHERE x IN (SELECT 1)").await.unwrap();
        }
        assert!(!Role::Station.may_query() && !Role::Ingest.may_query() && Role::Tracer.may_query());
    }
}
