//! Integration tests: the real server binary, driven through a real MCP client over stdio.

mod common;

mod audit_log;
mod direct_run;
mod docker;
mod escape;
mod experiment;
mod refusals;
mod tools;
