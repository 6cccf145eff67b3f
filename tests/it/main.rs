//! Integration tests: the real server binary, driven through a real MCP client over stdio.

mod common;

mod audit_log;
mod configs;
mod datasets;
mod direct_run;
mod docker;
mod escape;
mod experiment;
mod export;
mod noise;
mod refusals;
mod report;
mod tools;
