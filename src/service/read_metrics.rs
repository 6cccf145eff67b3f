//! `read_metrics`: the ledger as the agent sees it.

use serde_json::Value;

use super::args::ReadMetricsArgs;
use super::view::{MetricsView, metrics_view, render_view};
use super::{Reply, Service};

impl Service {
    pub fn read_metrics(&self, args: ReadMetricsArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("read_metrics", via, json, 0, || {
            let view = self.metrics_view(&args);
            let mut r = Reply::ok(render_view(&view));
            r.structured = serde_json::to_value(&view).ok();
            r
        })
    }

    pub fn metrics_view(&self, args: &ReadMetricsArgs) -> MetricsView {
        let runs = self.ledger.lock().unwrap().runs();
        MetricsView { in_flight: self.run_in_flight(), ..metrics_view(&runs, &self.state.baseline_train_hash, args) }
    }
}
