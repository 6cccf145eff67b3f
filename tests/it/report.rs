//! `autoresearch-mcp report` on a ledger with kept, baseline, discarded, crashed, cancelled and
//! abandoned runs and a fingerprint change: the files, the TSV, the SVG's marks, the PNG, the diffs,
//! and report.html rendered in headless Chromium (it renders, the chart is visible, one table row
//! per run, no script from a hostile description or diff runs).
//!
//! The ledger is written through the crate's ledger API and the kept runs are real commits on the
//! experiment branch (git2); no experiment is run, so this needs neither libtorch nor a sandbox.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autoresearch_mcp::audit::{GENESIS, Head};
use autoresearch_mcp::edit::unified_diff;
use autoresearch_mcp::ledger::{Event, Fingerprint, Ledger, PhaseTimes, Reported, RunStatus};
use autoresearch_mcp::paths::Paths;
use autoresearch_mcp::report::table::TSV_COLUMNS;
use autoresearch_mcp::score::Metrics;
use autoresearch_mcp::workspace::{Workspace, WorkspaceState};
use chrono::{TimeZone, Utc};

use crate::common::*;

/// A description that tries to run a script and to close the `<details>` it is shown in.
const HOSTILE: &str = "wider projection <script>document.title='PWN'+'ED'</script></details><b>bold</b>";
/// Diff text with the same intent.
const HOSTILE_DIFF_LINE: &str = "+// </pre></details><script>document.title='DIFF'+'HIT'</script>";

fn metrics(mean_rank: f64) -> Metrics {
    Metrics {
        mean_rank,
        median_rank: mean_rank * 0.8,
        i2t_mean_rank: mean_rank + 1.0,
        t2i_mean_rank: mean_rank - 1.0,
        i2t_r1: 10.0,
        i2t_r5: 30.0,
        i2t_r10: 45.0,
        t2i_r1: 11.0,
        t2i_r5: 31.0,
        t2i_r10: 46.0,
        n: 256,
        random_mean_rank: 127.5,
        folds: vec![],
        seeds: vec![],
    }
}

fn fingerprint(budget_seconds: u64) -> Fingerprint {
    Fingerprint {
        harness: "a".repeat(64),
        data: "b".repeat(64),
        val_n: 256,
        budget_seconds,
        profile: "tests".into(),
        device: "cpu".into(),
        libtorch: "2.11.0".into(),
        towers: String::new(),
    }
}

/// One run of the fixture: description, status, mean rank, kept, budget (fingerprint).
struct Spec {
    desc: &'static str,
    status: RunStatus,
    mean_rank: Option<f64>,
    kept: bool,
    budget: u64,
}

fn spec(desc: &'static str, status: RunStatus, mean_rank: Option<f64>, kept: bool, budget: u64) -> Spec {
    Spec { desc, status, mean_rank, kept, budget }
}

fn fixture() -> Vec<Spec> {
    use RunStatus::*;
    vec![
        spec("baseline", Ok, Some(120.5), false, 60),
        spec("raise LR to 1e-3", Ok, Some(98.2), true, 60),
        spec(HOSTILE, Ok, Some(105.0), false, 60),
        spec("bigger batch (does not compile)", BuildFailed, None, false, 60),
        spec("cosine schedule with warmup", Ok, Some(85.1), true, 60),
        spec("drop expert prob", Cancelled, None, false, 60),
        spec("label smoothing 0.1", Ok, Some(90.0), false, 60),
        spec("warmup 50 steps at the 120 s budget", Ok, Some(72.0), true, 120),
        spec("deeper text tower", Timeout, None, false, 120),
        spec("learnable temperature init 0.07", Ok, Some(65.3), true, 120),
        spec("server died during this one", Abandoned, None, false, 120),
        spec("weight decay 0.1", Ok, Some(75.0), false, 120),
    ]
}

/// Writes the fixture's ledger, run folders, commits and one revert into the workspace.
fn build_fixture(ws: &Ws) -> Vec<Spec> {
    let paths = Paths::new(&ws.root);
    let workspace = Workspace::open(&ws.root).unwrap();
    let state: WorkspaceState = serde_json::from_slice(&std::fs::read(paths.workspace_state()).unwrap()).unwrap();
    let mut ledger = Ledger::open(&paths.ledger()).unwrap();
    let head = || Head { hash: GENESIS.into(), lines: 0 };
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 20, 0, 0).unwrap();
    let mut kept_text = String::from_utf8(workspace.kept_train().unwrap()).unwrap();
    let specs = fixture();
    for (i, s) in specs.iter().enumerate() {
        let id = format!("r{:04}", i + 1);
        // Each run but the baseline changes one line at the end of train.rs.
        let text = if i == 0 {
            kept_text.clone()
        } else if s.desc == HOSTILE {
            format!("{kept_text}{}\n", &HOSTILE_DIFF_LINE[1..])
        } else {
            format!("{kept_text}// exp {}: {}\n", i + 1, s.desc)
        };
        let hash = autoresearch_mcp::fsutil::sha256_hex(text.as_bytes());
        let hash = if i == 0 { state.baseline_train_hash.clone() } else { hash };
        let at = t0 + chrono::Duration::minutes(10 * i as i64);
        ledger
            .append(Event::Started {
                run_id: id.clone(),
                at,
                train_hash: hash.clone(),
                description: s.desc.into(),
                fingerprint: fingerprint(s.budget),
                seed: 42,
                seeds: vec![],
                repeat_of: None,
                audit: head(),
            })
            .unwrap();
        // The run folder's diff; run 7's folder is gone (its diff survives through revert) and the
        // abandoned run's never got written.
        if i != 6 && s.status != RunStatus::Abandoned {
            let dir = paths.run_dir(&id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("diff.patch"), unified_diff(&kept_text, &text)).unwrap();
        }
        {
            // As the next server records a run that a dead server left: Finished, abandoned.
            ledger
                .append(Event::Finished {
                    run_id: id.clone(),
                    at: at + chrono::Duration::minutes(2),
                    status: s.status,
                    metrics: s.mean_rank.map(metrics),
                    reported: Reported { steps: Some(400), final_loss: Some(1.25), ..Default::default() },
                    phases: Box::new(PhaseTimes {
                        build: Some(1.0),
                        train: Some(55.0),
                        total: 70.0,
                        ..Default::default()
                    }),
                    overran: s.status == RunStatus::Timeout,
                    message: (s.status != RunStatus::Ok).then(|| format!("{:?}", s.status)),
                    per_seed: vec![],
                    audit: head(),
                })
                .unwrap();
        }
        if s.kept {
            workspace.write_train(&text).unwrap();
            let commit = workspace.commit_train(text.as_bytes(), &format!("exp {id}: {}", s.desc)).unwrap();
            ledger
                .append(Event::Kept {
                    run_id: id.clone(),
                    at: at + chrono::Duration::minutes(3),
                    commit,
                    train_hash: hash.clone(),
                    reason: None,
                    audit: head(),
                })
                .unwrap();
            kept_text = text;
        } else if i == 6 {
            let file = paths.reverts().join("20261122T210000.000-x.diff");
            std::fs::create_dir_all(paths.reverts()).unwrap();
            std::fs::write(&file, unified_diff(&kept_text, &text)).unwrap();
            ledger
                .append(Event::Reverted {
                    at: at + chrono::Duration::minutes(3),
                    train_hash: hash.clone(),
                    diff_file: paths.relative(&file).to_path_buf(),
                    audit: head(),
                })
                .unwrap();
        }
    }
    specs
}

#[test]
fn report_writes_chart_tables_diffs_and_a_safe_html_page() {
    let ws = Ws::new();
    let specs = build_fixture(&ws);
    let n = specs.len();

    let out = ws.cli(&["report"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "report failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let dir = ws.state("report");
    assert!(stdout.contains("| 2 | r0002 | kept | ok |"), "{stdout}");
    assert!(stdout.contains(&format!("wrote {}", dir.join("report.html").display())), "{stdout}");
    for f in ["chart.svg", "chart.png", "results.tsv", "results.md", "report.html"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // TSV: a header and one row per run, every row with every column.
    let tsv = std::fs::read_to_string(dir.join("results.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), n + 1, "{tsv}");
    assert_eq!(rows[0], TSV_COLUMNS);
    assert!(rows.iter().all(|r| r.len() == TSV_COLUMNS.len()), "{tsv}");
    let col = |name: &str| TSV_COLUMNS.iter().position(|c| *c == name).unwrap();
    let kinds: Vec<&str> = rows[1..].iter().map(|r| r[col("kind")]).collect();
    assert_eq!(
        kinds,
        [
            "baseline",
            "kept",
            "discarded",
            "crashed",
            "kept",
            "cancelled",
            "discarded",
            "kept",
            "crashed",
            "kept",
            "cancelled",
            "discarded"
        ]
    );
    assert_eq!(rows[2][col("mean_rank")], "98.2000");
    assert_eq!(rows[2][col("delta_vs_best")], "-22.3000", "delta against the baseline");
    assert_eq!(rows[2][col("commit")].len(), 40);
    assert_eq!(rows[3][col("description")], HOSTILE);
    assert_eq!(rows[4][col("mean_rank")], "", "a crashed run has no metric");
    assert_ne!(rows[7][col("fingerprint")], rows[8][col("fingerprint")]);

    // SVG: well-formed XML with one mark per run, of the right kind.
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("chart.svg is well-formed XML");
    let class_count = |c: &str| doc.descendants().filter(|d| d.attribute("class") == Some(c)).count();
    assert_eq!(class_count("run kept"), 4);
    assert_eq!(class_count("run baseline"), 1);
    assert_eq!(class_count("run discarded"), 3);
    assert_eq!(class_count("run crashed"), 2);
    assert_eq!(class_count("run cancelled"), 2);
    assert_eq!(class_count("fingerprint-change"), 1);
    assert_eq!(class_count("best-so-far"), 2, "one step line per fingerprint");
    let labels: Vec<&str> =
        doc.descendants().filter(|d| d.attribute("class") == Some("label")).filter_map(|d| d.text()).collect();
    assert!(labels.contains(&"raise LR to 1e-3"), "{labels:?}");
    assert!(labels.contains(&"learnable temperature init 0.07"), "{labels:?}");
    let texts: String = doc.descendants().filter_map(|d| d.text()).collect();
    assert!(texts.contains("mean rank (lower is better)") && texts.contains("experiment #"));
    assert!(resvg::usvg::Tree::from_str(&svg, &Default::default()).is_ok(), "usvg parses it too");

    // PNG: the SVG rasterised at twice its size, with the kept runs' green in it.
    let png = image::open(dir.join("chart.png")).expect("chart.png decodes").to_rgb8();
    assert_eq!(png.dimensions(), (2200, 1280));
    let green = png.pixels().filter(|p| near(p.0, [26, 150, 65])).count();
    assert!(green > 200, "kept markers in the PNG: {green} green pixels");

    // Diffs: every run that has one, from the commit, the run folder or the revert.
    let diff = |id: &str| std::fs::read_to_string(dir.join("diffs").join(format!("{id}.diff")));
    assert!(diff("r0002").unwrap().contains("+// exp 2: raise LR to 1e-3"), "kept: from its commit");
    assert!(diff("r0003").unwrap().contains(HOSTILE_DIFF_LINE), "discarded: from its run folder");
    assert!(diff("r0004").unwrap().contains("+// exp 4: bigger batch"), "crashed runs have diffs too");
    assert!(diff("r0007").unwrap().contains("+// exp 7: label smoothing 0.1"), "from the revert");
    assert_eq!(diff("r0001").unwrap(), "", "the baseline changes nothing");
    assert!(diff("r0011").is_err(), "the abandoned run has no diff");
    assert_eq!(std::fs::read_dir(dir.join("diffs")).unwrap().count(), n - 1);

    // report.html: self-contained, escaped.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    for external in ["src=", "href=\"http", "url(", "@import", "<link", "<script"] {
        assert!(!html.contains(external), "report.html must be self-contained and script-free: found {external}");
    }
    assert!(html.contains("&lt;script&gt;document.title=&#39;PWN&#39;+&#39;ED&#39;&lt;/script&gt;&lt;/details&gt;"));
    assert_eq!(html.matches("<details").count(), n);
    assert_eq!(html.matches("</details>").count(), n);

    // `--out` writes elsewhere.
    let other = ws.root.join("elsewhere");
    let out = ws.cli(&["report", "--out", other.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(other.join("report.html").is_file());

    check_in_chromium(&dir.join("report.html"), n);

    if let Some(keep) = std::env::var_os("AUTORESEARCH_KEEP_REPORT") {
        copy_dir(&dir, Path::new(&keep));
    }
}

fn near(p: [u8; 3], q: [u8; 3]) -> bool {
    p.iter().zip(q).all(|(a, b)| a.abs_diff(b) <= 24)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Debian's chromium, or $CHROMIUM. A missing browser fails the test: scripts/test.sh installs it.
fn chromium() -> PathBuf {
    let p = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.is_file(),
        "{} not found: the report test renders report.html in headless Chromium; install it with \
         `apt-get install -y chromium` (scripts/test.sh does) or set CHROMIUM",
        p.display()
    );
    p
}

/// Runs headless Chromium on `page` with `args`, with a fresh profile, killing it after 120 s.
fn run_chromium(page: &Path, args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn check_in_chromium(page: &Path, n: usize) {
    // The DOM after parsing (and after any script would have run).
    let out = run_chromium(page, &["--dump-dom".into()]);
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("<svg") && dom.contains("progress-chart"), "the chart's SVG is in the DOM");
    let table = &dom[dom.find("<table id=\"runs\"").expect("runs table")..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(table.matches("<tr id=\"run-").count(), n, "one table row per run");
    assert_eq!(dom.matches("<details").count(), n, "one <details> per run: no description closed one early");
    assert!(!dom.to_lowercase().contains("<script"), "no script element made it into the DOM");
    assert!(!dom.contains("<b>bold</b>"), "markup in a description stays text");
    assert!(dom.contains("&lt;b&gt;bold&lt;/b&gt;"));
    assert!(!dom.contains("PWNED") && !dom.contains("DIFFHIT"), "no injected script ran");

    // What a person sees: the chart is drawn at the top with its green and red marks spread over it.
    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("report.png");
    let out = run_chromium(page, &[format!("--screenshot={}", shot.display()), "--window-size=1200,2000".into()]);
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&shot).unwrap().to_rgb8();
    assert!(img.width() >= 1200);
    // Marks of one colour inside the chart figure (the table's tags share the colours but sit in one column).
    let spread = |rgb: [u8; 3]| {
        let xs: Vec<u32> =
            img.enumerate_pixels().filter(|(_, y, p)| *y < 800 && near(p.0, rgb)).map(|(x, _, _)| x).collect();
        (xs.len(), xs.iter().max().unwrap_or(&0) - xs.iter().min().unwrap_or(&0))
    };
    let (green, green_width) = spread([26, 150, 65]);
    let (red, red_width) = spread([214, 39, 40]);
    assert!(green > 200 && green_width > 400, "kept marks visible: {green} px over {green_width} px");
    assert!(red > 30 && red_width > 300, "crash marks visible: {red} px over {red_width} px");
    if let Some(keep) = std::env::var_os("AUTORESEARCH_KEEP_REPORT") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&shot, Path::new(&keep).join("report-screenshot.png")).unwrap();
    }
}
