//! jobstream's integration tests: one binary, a module per area.
//!
//! Tests that need third-party readers (DuckDB, pyarrow) or brokers live in `tests/python/`
//! and are run by `scripts/test` after these; `bridge_faults` needs `mosquitto` on PATH
//! (`scripts/test-env` installs it before these run).

mod bridge_faults;
mod columnar;
mod config;
mod fuzz;
mod group_failover;
mod parquet_sink;
mod parser;
mod replay_cli;
mod report;
mod support;
