//! Integration tests: the real server binary, driven through a real MCP client over stdio.

#[path = "../support/audit_log_fixture.rs"]
mod audit_log_fixture;
mod common;

mod audit_log;
mod configs;
mod datasets;
mod direct_run;
mod docker;
mod escape;
mod experiment;
mod export;
mod faults;
mod noise;
mod refusals;
mod report;
mod slurm;
mod standings;
mod tools;
mod towers;
mod transport;
