//! The MCP layer: exactly six tools, each a few lines over [`Service`]. Failures the agent can act
//! on come back as tool results with `isError: true`; protocol errors are rmcp's, behind the
//! framing of [`transport`](crate::transport), which answers malformed messages itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, RequestMetaObject, ServerCapabilities,
    ServerConfig,
};
use rmcp::{Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::service::{
    CommitArgs, EditTrainArgs, MetricsView, ReadMetricsArgs, Reply, RevertArgs, RunExperimentArgs, ScratchpadArgs,
    Service,
};

/// How often a long call reports progress (Claude Code resets its idle timer on each notification).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AutoresearchServer {
    svc: Arc<Service>,
    tool_router: ToolRouter<Self>,
}

impl AutoresearchServer {
    pub fn new(svc: Arc<Service>) -> Self {
        Self { svc, tool_router: Self::tool_router() }
    }
}

fn to_result(r: Reply) -> CallToolResult {
    let mut res = if r.is_error() {
        CallToolResult::error(vec![ContentBlock::text(r.text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(r.text)])
    };
    res.structured_content = r.structured;
    res
}

#[tool_router]
impl AutoresearchServer {
    /// View or edit trainer/src/train.rs, the one file you may change. `view` shows numbered lines;
    /// `str_replace` replaces text that must match exactly once; `insert` adds lines after a line.
    /// Edits return the unified diff against the last kept commit. Refused while a run is in flight.
    #[tool(annotations(destructive_hint = false, open_world_hint = false))]
    async fn edit_train(&self, Parameters(args): Parameters<EditTrainArgs>) -> CallToolResult {
        to_result(self.svc.edit_train(args, "mcp"))
    }

    /// Build train.rs and run one experiment in the sandbox (no network, time budget enforced):
    /// train on the training split, embed the validation set, score it in the server. Returns the
    /// metrics (mean rank: lower is better) per seed, the paired comparison with the kept state on
    /// shared seeds, and the log tail on failure. `seed_list` names the seeds (e.g. the kept run's). Takes minutes; progress is reported. One run at a time.
    #[tool(annotations(destructive_hint = false, open_world_hint = false))]
    async fn run_experiment(
        &self,
        Parameters(args): Parameters<RunExperimentArgs>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        ct: CancellationToken,
    ) -> CallToolResult {
        let (tx, rx) = watch::channel("starting".to_string());
        let ticker = meta.get_progress_token().map(|token| tokio::spawn(report_progress(peer, token, rx)));
        let reply = self.svc.run_experiment(args, "mcp", ct, tx).await;
        if let Some(t) = ticker {
            t.abort();
        }
        // Claude Code (2.1.330) hands the model a result's structuredContent in place of its text when
        // both are present: the row carries the comparison line, the next step, the warnings and a
        // failure's message (fenced log tail) as fields, not a copy of the text.
        to_result(reply)
    }

    /// The results ledger, small: the baseline, the current kept state (what deltas are against), the
    /// noise floor, the last runs one line each (per-seed values, delta vs kept, flags), the run in
    /// flight. Filter with `last`, `status`, `kept_only`; full rows with `full` (10 a `page`).
    #[tool(annotations(read_only_hint = true, open_world_hint = false), output_schema = schema_for_output::<MetricsView>())]
    async fn read_metrics(&self, Parameters(args): Parameters<ReadMetricsArgs>) -> CallToolResult {
        to_result(self.svc.read_metrics(args, "mcp"))
    }

    /// Keep the current train.rs: commit it on the experiment branch with the metric and delta of its
    /// best successful run. Refused if this exact train.rs has no successful run, or nothing changed,
    /// or (without a `reason`) if that run does not beat the kept state (paired on shared seeds).
    #[tool(annotations(destructive_hint = false, open_world_hint = false))]
    async fn commit(&self, Parameters(args): Parameters<CommitArgs>) -> CallToolResult {
        to_result(self.svc.commit(args, "mcp"))
    }

    /// Discard the current changes: restore train.rs to the last kept commit. The discarded diff
    /// stays in the ledger.
    #[tool(annotations(destructive_hint = false, idempotent_hint = true, open_world_hint = false))]
    async fn revert(&self, Parameters(args): Parameters<RevertArgs>) -> CallToolResult {
        to_result(self.svc.revert(args, "mcp"))
    }

    /// Append a timestamped note to scratchpad.md, your working memory across the session:
    /// best result, hypotheses, what failed, what to try next.
    #[tool(annotations(destructive_hint = false, open_world_hint = false))]
    async fn append_scratchpad(&self, Parameters(args): Parameters<ScratchpadArgs>) -> CallToolResult {
        to_result(self.svc.append_scratchpad(args, "mcp"))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for AutoresearchServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("autoresearch-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(self.svc.instructions())
    }
}

/// Sends a progress notification on every phase change and at least every [`PROGRESS_EVERY`].
/// Messages carry only what the server knows (phase, elapsed time), never program output.
async fn report_progress(peer: Peer<RoleServer>, token: rmcp::model::ProgressToken, mut rx: watch::Receiver<String>) {
    let start = Instant::now();
    loop {
        let phase = rx.borrow_and_update().clone();
        let elapsed = start.elapsed().as_secs_f64();
        let note = ProgressNotificationParam::new(token.clone(), elapsed.floor())
            .with_message(format!("{phase} ({elapsed:.0} s elapsed)"));
        if peer.notify_progress(note).await.is_err() {
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
    }
}
