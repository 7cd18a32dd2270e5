//! The integration tests of the `proxima` binary, one module per subject, built as one test
//! binary (`cargo test --test integration MODULE::` runs one subject): each starts the real
//! `proxima` (`serve`, `scheduler`, `executor`, the CLI commands) and talks to it with real
//! clients. The golden SQL suite is a binary of its own (`tests/sqllogictests.rs`).

mod common;

mod abuse;
mod audit_cli;
mod chaos;
mod cluster;
mod dashboard;
mod durability;
mod encryption;
mod erasure;
mod flight_sql;
mod id_key_cli;
mod maintenance;
mod nodes;
mod oidc;
mod openapi;
mod phone_cli;
mod policy_matrix;
mod rest;
mod s3;
