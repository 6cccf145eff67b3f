//! `report.html`: one self-contained page (inline SVG chart, the runs table, every diff in a
//! collapsible `<details>`, inline CSS, no script and no external resource) that opens from disk.
//! Descriptions and diffs are agent text: everything from the ledger goes through [`escape`], and a
//! Content-Security-Policy that allows no script is a second line of defence.

use std::fmt::Write as _;

use super::{Entry, Report, short_label};

/// Escapes text for HTML and XML content and attribute values (quotes included).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters other than tab and newline are not valid in XML 1.0.
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #222; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; margin: 4px 0; }
figure#chart { margin: 16px 0; overflow-x: auto; }
figure#chart svg { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
table#runs { border-collapse: collapse; font-size: 13px; width: 100%; }
#runs th, #runs td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
#runs th { background: #f4f4f4; position: sticky; top: 0; }
#runs td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#runs td.desc { word-break: break-word; }
#runs tr.kept td { background: #eaf7ee; }
#runs tr.baseline td { background: #eaf1fb; }
#runs tr.crashed td { background: #fdeeee; }
#runs tr.cancelled td { background: #fff5e6; }
table#test { border-collapse: collapse; font-size: 13px; }
#test th, #test td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
#test th { background: #f4f4f4; }
#test td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; color: #fff; }
.tag.kept { background: #1a9641; } .tag.baseline { background: #2b6cb0; } .tag.discarded { background: #8a8a8a; }
.tag.crashed { background: #d62728; } .tag.cancelled { background: #f08c00; }
details { border: 1px solid #ddd; border-radius: 4px; margin: 6px 0; }
details > summary { cursor: pointer; padding: 4px 8px; background: #f8f8f8; }
pre.diff { margin: 0; padding: 8px; overflow-x: auto; font-size: 12px; line-height: 1.35; font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
pre.diff span { display: block; min-height: 1.35em; white-space: pre; }
pre.diff .add { color: #116329; background: #e6ffec; }
pre.diff .del { color: #82071e; background: #ffebe9; }
pre.diff .hunk { color: #6639ba; }
.none { color: #777; padding: 4px 8px; margin: 0; }
.src { color: #777; padding: 4px 8px 0; margin: 0; font-size: 12px; }
"#;

/// The page; `svg` is the chart from [`super::chart::svg`].
pub fn page(report: &Report, svg: &str) -> String {
    let mut o = String::with_capacity(64 * 1024 + svg.len());
    let title = format!(
        "autoresearch report{}",
        report.branch.as_deref().map(|b| format!(" · {}", short_label(b, 80))).unwrap_or_default()
    );
    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{}</h1>
<p class="meta" id="headline">{}</p>
<p class="meta">workspace <code>{}</code> · generated {}</p>
<figure id="chart">
{svg}</figure>
"#,
        escape(&title),
        escape(&title),
        escape(&report.headline()),
        escape(&report.workspace.display().to_string()),
        report.generated_at.format("%Y-%m-%d %H:%M UTC"),
    );
    runs_table(&mut o, report);
    test_table(&mut o, report);
    diffs(&mut o, report);
    o.push_str("</body>\n</html>\n");
    o
}

fn num(x: Option<f64>, prec: usize) -> String {
    x.map(|v| format!("{v:.prec$}")).unwrap_or_default()
}

fn runs_table(o: &mut String, report: &Report) {
    o.push_str(
        r#"<h2>Runs</h2>
<table id="runs">
<thead><tr><th>#</th><th>run</th><th>kind</th><th>status</th><th>mean rank</th><th>Δ best</th><th>test mean rank</th><th>median</th><th>i2t R@1/5/10</th><th>t2i R@1/5/10</th><th>train s</th><th>commit</th><th>fingerprint</th><th>description</th></tr></thead>
<tbody>
"#,
    );
    for e in &report.entries {
        let r = &e.run;
        let m = r.metrics.as_ref();
        let mut status = e.status();
        if r.overran {
            status.push_str(" (overran)");
        }
        let _ = writeln!(
            o,
            r##"<tr id="run-{id}" class="{kind}"><td class="num">{}</td><td><a href="#diff-{id}">{id}</a></td><td><span class="tag {kind}">{label}</span></td><td title="{}">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td><code>{}</code></td><td><code>{}</code></td><td class="desc">{}</td></tr>"##,
            r.number,
            escape(r.message.as_deref().unwrap_or("")),
            escape(&status),
            num(m.map(|m| m.mean_rank), 2),
            e.delta().map(|d| format!("{d:+.2}")).unwrap_or_default(),
            num(report.test_metrics(&r.id).map(|m| m.mean_rank), 2),
            num(m.map(|m| m.median_rank), 1),
            m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.i2t_r1, m.i2t_r5, m.i2t_r10)).unwrap_or_default(),
            m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.t2i_r1, m.t2i_r5, m.t2i_r10)).unwrap_or_default(),
            num(r.phases.train, 1),
            escape(&r.commit.as_deref().map(|c| c[..c.len().min(10)].to_string()).unwrap_or_default()),
            escape(&e.fingerprint),
            escape(&e.description(1000)),
            id = escape(&r.id),
            kind = e.kind.as_str(),
            label = e.kind_label(),
        );
    }
    o.push_str("</tbody>\n</table>\n");
}

/// The last `report --test`: validation against test for the baseline and every kept run.
fn test_table(o: &mut String, report: &Report) {
    let Some(t) = &report.test else { return };
    let _ = write!(
        o,
        r#"<h2>Test split</h2>
<p class="meta">{} pairs (random retrieval mean rank {:.1}), scored {} by <code>report --test</code>; no phase of the loop ever saw them.</p>
<table id="test">
<thead><tr><th>#</th><th>run</th><th>kind</th><th>val mean rank</th><th>test mean rank</th><th>test median</th><th>test i2t R@1/5/10</th><th>test t2i R@1/5/10</th><th>note</th><th>description</th></tr></thead>
<tbody>
"#,
        t.test_n,
        (t.test_n as f64 - 1.0) / 2.0,
        t.generated_at.format("%Y-%m-%d %H:%M UTC"),
    );
    for r in &t.rows {
        let m = r.metrics.as_ref();
        let note = match (&r.skipped, &r.note) {
            (Some(why), _) => format!("not scored: {why}"),
            (None, n) => n.clone().unwrap_or_default(),
        };
        let kind = if r.kind == "kept" { "kept" } else { "baseline" };
        let _ = writeln!(
            o,
            r#"<tr class="{kind}"><td class="num">{}</td><td>{}</td><td><span class="tag {kind}">{kind}</span></td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td><td class="desc">{}</td></tr>"#,
            r.number,
            escape(&r.run_id),
            num(r.val_mean_rank, 2),
            num(m.map(|m| m.mean_rank), 2),
            num(m.map(|m| m.median_rank), 1),
            m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.i2t_r1, m.i2t_r5, m.i2t_r10)).unwrap_or_default(),
            m.map(|m| format!("{:.1}/{:.1}/{:.1}", m.t2i_r1, m.t2i_r5, m.t2i_r10)).unwrap_or_default(),
            escape(&short_label(&note, 500)),
            escape(&short_label(&r.description, 1000)),
        );
    }
    o.push_str("</tbody>\n</table>\n");
}

fn diffs(o: &mut String, report: &Report) {
    o.push_str("<h2>Diffs</h2>\n<section id=\"diffs\">\n");
    for e in &report.entries {
        let _ = write!(
            o,
            r#"<details id="diff-{id}" class="{kind}"><summary>#{} {id} · <span class="tag {kind}">{kind}</span> · {}</summary>"#,
            e.run.number,
            escape(&short_label(&e.run.description, 200)),
            id = escape(&e.run.id),
            kind = e.kind.as_str(),
        );
        diff_body(o, e);
        o.push_str("</details>\n");
    }
    o.push_str("</section>\n");
}

fn diff_body(o: &mut String, e: &Entry) {
    match &e.diff {
        None => o.push_str(r#"<p class="none">no diff recorded for this run</p>"#),
        Some(d) if d.text.trim().is_empty() => {
            let _ = write!(
                o,
                r#"<p class="none">no change to train.rs against the kept version ({})</p>"#,
                escape(&d.source)
            );
        }
        Some(d) => {
            let _ = write!(o, r#"<p class="src">from {}</p><pre class="diff">"#, escape(&d.source));
            for line in d.text.lines() {
                let class = if line.starts_with("+++") || line.starts_with("---") {
                    "file"
                } else if line.starts_with('+') {
                    "add"
                } else if line.starts_with('-') {
                    "del"
                } else if line.starts_with("@@") {
                    "hunk"
                } else {
                    "ctx"
                };
                let _ = write!(o, r#"<span class="{class}">{}</span>"#, escape(line));
            }
            o.push_str("</pre>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_quotes_and_controls() {
        assert_eq!(
            escape(r#"<script>alert("x")</script></details>&'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;/details&gt;&amp;&#39;"
        );
        assert_eq!(escape("a\u{1b}b\u{0}c\nd"), "a\u{FFFD}b\u{FFFD}c\nd");
    }
}
