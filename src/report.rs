//! The results table of every run, as Markdown (what `autoresearch-mcp report` and the demo print).

use crate::ledger::Run;

pub fn markdown_table(runs: &[Run]) -> String {
    let mut t = String::from(
        "| # | run | status | mean rank | random | median | i2t R@1/5/10 | t2i R@1/5/10 | train s | kept | description |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let status = serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let (mr, rnd, med, i2t, t2i) = match &r.metrics {
            Some(m) => (
                format!("{:.2}", m.mean_rank),
                format!("{:.1}", m.random_mean_rank),
                format!("{:.1}", m.median_rank),
                format!("{:.1}/{:.1}/{:.1}", m.i2t_r1, m.i2t_r5, m.i2t_r10),
                format!("{:.1}/{:.1}/{:.1}", m.t2i_r1, m.t2i_r5, m.t2i_r10),
            ),
            None => Default::default(),
        };
        t.push_str(&format!(
            "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.number,
            r.id,
            status,
            if r.overran { " (overran)" } else { "" },
            mr,
            rnd,
            med,
            i2t,
            t2i,
            r.phases.train.map(|s| format!("{s:.1}")).unwrap_or_default(),
            if r.kept { "yes" } else { "" },
            r.description.replace('|', "\\|"),
        ));
    }
    t
}
