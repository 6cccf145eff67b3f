//! The results table, one row per run: Markdown (`results.md`, also printed by `report`) and
//! tab-separated values (`results.tsv`, for spreadsheets and pandas).

use super::{Entry, Report};

fn fmt(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}")).unwrap_or_default()
}

fn signed(x: Option<f64>) -> String {
    x.map(|v| format!("{v:+.2}")).unwrap_or_default()
}

fn short_commit(e: &Entry) -> String {
    e.run.commit.as_deref().map(|c| c[..c.len().min(10)].to_string()).unwrap_or_default()
}

/// Markdown: `|` in descriptions is escaped, control characters and newlines become spaces.
pub fn markdown(report: &Report) -> String {
    let mut t = String::from(
        "| # | run | kind | status | mean rank | Δ best | test mean rank | random | median | i2t R@1/5/10 | t2i R@1/5/10 | train s | commit | fingerprint | description |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for e in &report.entries {
        let r = &e.run;
        let m = r.metrics.as_ref();
        t.push_str(&format!(
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.number,
            r.id,
            e.kind_label(),
            e.status(),
            if r.overran { " (overran)" } else { "" },
            fmt(m.map(|m| m.mean_rank), 2),
            signed(e.delta()),
            fmt(report.test_metrics(&r.id).map(|m| m.mean_rank), 2),
            fmt(m.map(|m| m.random_mean_rank), 1),
            fmt(m.map(|m| m.median_rank), 1),
            m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.i2t_r1, m.i2t_r5, m.i2t_r10)).unwrap_or_default(),
            m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.t2i_r1, m.t2i_r5, m.t2i_r10)).unwrap_or_default(),
            fmt(r.phases.train, 1),
            short_commit(e),
            e.fingerprint,
            e.description(500).replace('\\', "\\\\").replace('|', "\\|"),
        ));
    }
    t
}

/// The TSV columns, in order.
pub const TSV_COLUMNS: &[&str] = &[
    "number",
    "run_id",
    "started_at",
    "kind",
    "status",
    "overran",
    "commit",
    "mean_rank",
    "delta_vs_best",
    "median_rank",
    "random_mean_rank",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "test_mean_rank",
    "test_median_rank",
    "test_i2t_r1",
    "test_i2t_r5",
    "test_i2t_r10",
    "test_t2i_r1",
    "test_t2i_r5",
    "test_t2i_r10",
    "n_val",
    "train_seconds",
    "total_seconds",
    "steps",
    "final_loss",
    "seed",
    "fingerprint",
    "train_hash",
    "description",
    "kept_reason",
];

/// Tab-separated, a header line then one line per run; tabs and newlines in text become spaces.
pub fn tsv(report: &Report) -> String {
    let mut t = TSV_COLUMNS.join("\t");
    t.push('\n');
    for e in &report.entries {
        let r = &e.run;
        let m = r.metrics.as_ref();
        let tm = report.test_metrics(&r.id);
        let cells = [
            r.number.to_string(),
            r.id.clone(),
            r.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.kind.as_str().to_string(),
            e.status(),
            r.overran.to_string(),
            r.commit.clone().unwrap_or_default(),
            fmt(m.map(|m| m.mean_rank), 4),
            fmt(e.delta(), 4),
            fmt(m.map(|m| m.median_rank), 2),
            fmt(m.map(|m| m.random_mean_rank), 2),
            fmt(m.map(|m| m.i2t_r1), 2),
            fmt(m.map(|m| m.i2t_r5), 2),
            fmt(m.map(|m| m.i2t_r10), 2),
            fmt(m.map(|m| m.t2i_r1), 2),
            fmt(m.map(|m| m.t2i_r5), 2),
            fmt(m.map(|m| m.t2i_r10), 2),
            fmt(tm.map(|m| m.mean_rank), 4),
            fmt(tm.map(|m| m.median_rank), 2),
            fmt(tm.map(|m| m.i2t_r1), 2),
            fmt(tm.map(|m| m.i2t_r5), 2),
            fmt(tm.map(|m| m.i2t_r10), 2),
            fmt(tm.map(|m| m.t2i_r1), 2),
            fmt(tm.map(|m| m.t2i_r5), 2),
            fmt(tm.map(|m| m.t2i_r10), 2),
            r.fingerprint.val_n.to_string(),
            fmt(r.phases.train, 2),
            format!("{:.2}", r.phases.total),
            r.reported.steps.map(|s| s.to_string()).unwrap_or_default(),
            fmt(r.reported.final_loss, 5),
            r.seed.to_string(),
            e.fingerprint.clone(),
            r.train_hash.clone(),
            super::short_label(&r.description, 10_000),
            super::short_label(r.kept_reason.as_deref().unwrap_or_default(), 10_000),
        ];
        t.push_str(&cells.map(|c| c.replace(['\t', '\n', '\r'], " ")).join("\t"));
        t.push('\n');
    }
    t
}
