//! Who is asking: users' roles and what each role's session may do.
//!
//! Every authenticated caller (Flight SQL today, REST later) becomes a
//! [`Principal`]; [`crate::SessionFactory::session_for`] builds its session and
//! [`Principal::sql_options`] says which kinds of statement it may run. Per-role
//! catalogs and functions will be decided here too, so there is one place to read.

use std::fmt;
use std::str::FromStr;

use datafusion::execution::context::SQLOptions;

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
}

impl Principal {
    /// The kinds of statement this user may run. Only admins may run DDL
    /// (`CREATE EXTERNAL TABLE` reads any server file) or DML (`COPY … TO`
    /// writes server files); everyone may `SET` session options.
    pub fn sql_options(&self) -> SQLOptions {
        let admin = self.role == Role::Admin;
        SQLOptions::new()
            .with_allow_ddl(admin)
            .with_allow_dml(admin)
            .with_allow_statements(true)
    }
}
