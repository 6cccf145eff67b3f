//! Issue 12, "nothing lost, ever": the ledger, the audit log and git under real faults. A crash
//! that cuts a line (a real file truncated mid-line), a full disk (a size-limited tmpfs), a locked
//! index (a real `.git/index.lock`), a branch switched under the server (the git CLI), a commit that
//! landed without its ledger line, a corrupt byte, the state folder deleted, an immutable train.rs,
//! and SIGKILLs at random moments. Cheap tools only: where a commit needs a successful run, the
//! ledger is given one (through the crate's ledger API, before the server starts), as a server
//! would have written it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use autoresearch_mcp::fsutil::sha256_hex;
use autoresearch_mcp::ledger::Ledger;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};

use crate::common::*;

const BRANCH: &str = "autoresearch/test";

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

/// Stops the server the way a client does (closes stdin, waits for it to exit).
async fn stop<H: rmcp::ClientHandler>(c: Client<H>) {
    let _ = c.service.cancel().await;
}

/// A call that may fail at the protocol level (the server was killed).
async fn try_call(c: &Client, tool: &str, args: Value) -> Option<CallToolResult> {
    let params =
        CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap_or_default());
    tokio::time::timeout(Duration::from_secs(20), c.service.call_tool(params)).await.ok()?.ok()
}

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn git(ws: &Ws, args: &[&str]) -> String {
    let o = Command::new("git").arg("-C").arg(&ws.root).args(args).output().unwrap();
    assert!(o.status.success(), "git {args:?}: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn tip(ws: &Ws, branch: &str) -> String {
    git(ws, &["rev-parse", &format!("refs/heads/{branch}")])
}

/// The other branch of a fresh workspace (the one `init` branched from).
fn other_branch(ws: &Ws) -> String {
    git(ws, &["for-each-ref", "--format=%(refname:short)", "refs/heads"])
        .lines()
        .find(|b| *b != BRANCH)
        .expect("the branch init started from")
        .to_string()
}

/// Every ledger line, each of which must be a JSON object.
fn ledger_lines(ws: &Ws) -> Vec<Value> {
    let text = std::fs::read_to_string(ws.state("runs.jsonl")).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "the ledger ends on a line boundary");
    text.lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("runs.jsonl line {} is malformed: {e}", i + 1)))
        .collect()
}

fn kept_commits(ws: &Ws) -> Vec<String> {
    ledger_lines(ws)
        .iter()
        .filter(|l| l["event"] == "kept")
        .map(|l| l["commit"].as_str().unwrap().to_string())
        .collect()
}

/// Commits on the experiment branch since the baseline, oldest first.
fn branch_commits(ws: &Ws) -> Vec<String> {
    let state: Value = serde_json::from_slice(&std::fs::read(ws.state("workspace.json")).unwrap()).unwrap();
    let base = state["baseline_commit"].as_str().unwrap();
    let list = git(ws, &["rev-list", "--reverse", &format!("{base}..refs/heads/{BRANCH}")]);
    list.lines().map(String::from).collect()
}

fn audit_verify(ws: &Ws) -> String {
    let o = ws.cli(&["audit", "verify"]);
    let said = out(&o);
    assert!(o.status.success(), "audit verify failed: {said}");
    said
}

fn doctor_state(ws: &Ws) -> String {
    out(&ws.cli(&["doctor", "--state"]))
}

/// Gives the ledger one finished, successful, in-budget run per text (as a server records one), so
/// that `commit` accepts those train.rs contents without training anything.
fn seed_ok_runs(ws: &Ws, texts: &[String]) {
    let mut ledger = Ledger::open(&ws.state("runs.jsonl")).unwrap();
    let start = ledger.runs().len();
    for (i, text) in texts.iter().enumerate() {
        let run_id = format!("r{:04}", start + i + 1);
        let description = format!("variant {}", i + 1);
        seed_ok_run(&mut ledger, &run_id, &sha256_hex(text.as_bytes()), &description, 100.0 - i as f64 * 0.01);
    }
}

/// train.rs with the baseline learning rate raised (what `ws.raise_lr_edit()` does through the tool).
fn raised_lr(ws: &Ws) -> String {
    let e = ws.raise_lr_edit();
    let src = std::fs::read_to_string(ws.train_rs()).unwrap();
    src.replacen(e["old_str"].as_str().unwrap(), e["new_str"].as_str().unwrap(), 1)
}

/// Files named `*.tmp-<digits>` under `dir` (recursively, .git excluded).
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else { return found };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if name != ".git" && name != "target" {
                found.extend(temp_files(&p));
            }
        } else if name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        {
            found.push(p);
        }
    }
    found
}

/// A size-limited tmpfs mounted over a folder (its content copied in); unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn over(dir: &Path, size: &str) -> Self {
        let keep = tempfile::tempdir().unwrap();
        let cp = |from: &Path, to: &Path| {
            let o = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).output().unwrap();
            assert!(o.status.success(), "cp: {}", out(&o));
        };
        cp(dir, keep.path());
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount tmpfs (the test runs as root): {}", out(&o));
        cp(keep.path(), dir);
        Tmpfs { dir: dir.to_path_buf() }
    }

    /// Fills the file system until a write fails with ENOSPC; returns the filler's path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.dir.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

// ------------------------------------------------------------------------------------------------
// 1. A torn last line
// ------------------------------------------------------------------------------------------------

/// A crash cuts the ledger's last line mid-write and a power cut cuts the audit log's last line:
/// the next start sets both fragments aside (kept in `*.torn`, never deleted), records the repair
/// in the audit chain, appends on a line boundary; the start after that works, every reader works,
/// `audit verify` passes and explains the repair, and `doctor` reports it.
#[tokio::test]
async fn a_torn_last_line_is_set_aside_and_every_later_start_works() {
    let ws = Ws::new();
    let c = ws.client().await;
    for i in 0..3 {
        let r = c
            .call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": format!("// idea {i}")}))
            .await;
        assert!(!is_error(&r), "{}", text(&r));
        let r = c.call("revert", json!({"reason": format!("idea {i} is worse")})).await;
        assert!(!is_error(&r), "{}", text(&r));
    }
    c.call("append_scratchpad", json!({"entry": "before the crash"})).await;
    stop(c).await;

    // The ledger: a crash in the middle of writing one more line (half of a real line, no newline).
    let ledger_path = ws.state("runs.jsonl");
    let ledger_before = std::fs::read(&ledger_path).unwrap();
    let last = ledger_before[..ledger_before.len() - 1].rsplit(|b| *b == b'\n').next().unwrap().to_vec();
    let ledger_fragment = last[..last.len() / 2].to_vec();
    let mut torn = ledger_before.clone();
    torn.extend_from_slice(&ledger_fragment);
    std::fs::write(&ledger_path, &torn).unwrap();

    // The audit log: its (acknowledged) last line cut in the middle, as a power cut on a lying disk.
    let audit_path = ws.state("audit.jsonl");
    let audit_before = std::fs::read(&audit_path).unwrap();
    let body = &audit_before[..audit_before.len() - 1];
    let cut_at = body.iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let audit_fragment = body[cut_at..cut_at + (body.len() - cut_at) / 2].to_vec();
    let f = std::fs::OpenOptions::new().write(true).open(&audit_path).unwrap();
    f.set_len((cut_at + audit_fragment.len()) as u64).unwrap();
    drop(f);

    // The next start: the tool calls work and land on line boundaries.
    let c = ws.client().await;
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// after the crash"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("revert", json!({"reason": "after the crash"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("append_scratchpad", json!({"entry": "after the crash"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;
    // ...and the start after that too (it used to fail: "line N is malformed").
    let c = ws.client().await;
    let r = c.call("read_metrics", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;

    // Nothing acknowledged is lost: the ledger still begins with every line it had, then the new ones.
    let ledger_after = std::fs::read(&ledger_path).unwrap();
    assert!(ledger_after.starts_with(&ledger_before), "the acknowledged ledger lines are intact");
    let lines = ledger_lines(&ws);
    assert_eq!(lines.iter().filter(|l| l["event"] == "reverted").count(), 4, "{lines:?}");
    // The fragments are kept, byte for byte, beside the files.
    let ledger_torn = std::fs::read_to_string(ws.state("runs.jsonl.torn")).expect("runs.jsonl.torn");
    assert!(
        ledger_torn.contains(&serde_json::to_string(&String::from_utf8_lossy(&ledger_fragment)).unwrap()[1..40]),
        "{ledger_torn}"
    );
    let audit_torn = std::fs::read_to_string(ws.state("audit.jsonl.torn")).expect("audit.jsonl.torn");
    assert!(audit_torn.contains(&sha256_hex(&audit_fragment)), "{audit_torn}");
    // Every audit line is a record; the lines before the cut are untouched.
    let audit_after = std::fs::read(&audit_path).unwrap();
    assert!(audit_after.starts_with(&audit_before[..cut_at]));
    let recs = audit_lines(&ws);
    let repairs: Vec<&Value> = recs.iter().filter(|r| r["tool"] == "repair").collect();
    assert_eq!(repairs.len(), 2, "one repair record per file set aside: {repairs:?}");
    assert!(repairs.iter().any(|r| r["args"]["sha256"] == sha256_hex(&audit_fragment)), "{repairs:?}");

    // Every reader works.
    for args in [&["report"][..], &["status"], &["audit", "list"], &["audit", "summary"]] {
        let o = ws.cli(args);
        assert!(o.status.success(), "{args:?}: {}", out(&o));
    }
    let said = audit_verify(&ws);
    assert!(said.contains("repair") && said.contains("set aside"), "verify explains the repair: {said}");
    let doctor = doctor_state(&ws);
    assert!(doctor.contains("runs.jsonl.torn") && doctor.contains("audit.jsonl.torn"), "{doctor}");
}

/// One bad byte in a middle ledger line: every command still works, names the file and line, and
/// skips only that line; the server starts (and never drops the line); doctor names it too.
#[tokio::test]
async fn a_bad_byte_in_a_middle_ledger_line_is_named_and_skipped() {
    let ws = Ws::new();
    let c = ws.client().await;
    for i in 0..3 {
        c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": format!("// idea {i}")})).await;
        let r = c.call("revert", json!({"reason": format!("idea {i}")})).await;
        assert!(!is_error(&r), "{}", text(&r));
    }
    stop(c).await;
    let path = ws.state("runs.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    bytes[second + 3] = 0xff;
    std::fs::write(&path, &bytes).unwrap();

    for args in [&["report"][..], &["status"], &["audit", "verify"], &["audit", "list"]] {
        let o = ws.cli(args);
        let said = out(&o);
        assert!(o.status.success(), "{args:?}: {said}");
        if args[0] != "audit" || args[1] == "verify" {
            assert!(said.contains("runs.jsonl line 2"), "{args:?} names the line: {said}");
        }
    }
    let c = ws.client().await;
    let r = c.call("revert", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// more"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("revert", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;
    let after = std::fs::read(&path).unwrap();
    assert!(after.starts_with(&bytes), "the server never rewrites or drops the bad line");
    assert!(doctor_state(&ws).contains("runs.jsonl line 2"));
}

// ------------------------------------------------------------------------------------------------
// 2. A full disk
// ------------------------------------------------------------------------------------------------

/// With the state folder's disk full, every tool answers isError ("disk full") and does nothing:
/// train.rs, the scratchpad, the ledger and the audit log are unchanged, no temp file is left. Once
/// space is freed the tools work again and `audit verify` passes.
#[tokio::test]
async fn a_full_disk_fails_the_call_and_does_nothing() {
    let ws = Ws::new();
    let fs = Tmpfs::over(&ws.state(""), "512k");
    let c = ws.client().await;
    let edit = ws.raise_lr_edit();
    let r = c.call("edit_train", edit.clone()).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("append_scratchpad", json!({"entry": "before the disk filled"})).await;
    assert!(!is_error(&r), "{}", text(&r));

    let filler = fs.fill();
    let snapshot = |ws: &Ws| {
        (
            std::fs::read(ws.train_rs()).unwrap(),
            std::fs::read(ws.root.join("scratchpad.md")).unwrap(),
            std::fs::read(ws.state("runs.jsonl")).unwrap_or_default(),
            std::fs::read(ws.state("audit.jsonl")).unwrap(),
        )
    };
    let before = snapshot(&ws);
    let long_note = "x".repeat(3000);
    let calls = [
        ("revert", json!({"reason": "undo"})),
        ("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// while full"})),
        ("append_scratchpad", json!({"entry": long_note})),
        ("read_metrics", json!({})),
        ("commit", json!({"description": "while full"})),
        ("run_experiment", json!({"description": "while full"})),
        ("edit_train", json!({"command": "view", "view_range": [1, 2]})),
    ];
    for _ in 0..3 {
        for (tool, args) in &calls {
            let r = c.call(tool, args.clone()).await;
            assert!(is_error(&r), "{tool} on a full disk must fail: {}", text(&r));
            assert!(text(&r).contains("disk full"), "{tool}: {}", text(&r));
            assert!(text(&r).contains("nothing was done"), "{tool}: {}", text(&r));
        }
    }
    assert!(before == snapshot(&ws), "nothing changed while the disk was full");
    assert_eq!(temp_files(&ws.root), Vec::<PathBuf>::new());

    std::fs::remove_file(&filler).unwrap();
    let r = c.call("revert", json!({"reason": "space is back"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("append_scratchpad", json!({"entry": "space is back"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;

    let recs = audit_lines(&ws);
    let tools: Vec<&str> = recs.iter().map(|r| r["tool"].as_str().unwrap()).collect();
    assert_eq!(
        tools,
        ["edit_train", "append_scratchpad", "repair", "revert", "append_scratchpad"],
        "the calls that acted, and one record of those refused unrecorded"
    );
    assert_eq!(recs[2]["args"]["kind"], "unrecorded_calls");
    assert_eq!(recs[2]["args"]["calls"], calls.len() * 3);
    assert!(ledger_lines(&ws).iter().any(|l| l["event"] == "reverted"));
    audit_verify(&ws);
    assert_eq!(temp_files(&ws.root), Vec::<PathBuf>::new());
    drop(fs);
}

/// The old failure: the disk fills while records are being written, one record is cut at the end
/// of the last free page, and the next record used to land on the fragment (verify failed for
/// good). Writes are now reserved before acting, so no record is ever cut.
#[tokio::test]
async fn a_disk_filling_between_records_never_cuts_one() {
    let ws = Ws::new();
    let fs = Tmpfs::over(&ws.state(""), "512k");
    let c = ws.client().await;
    let filler = fs.fill();
    for i in 0..20 {
        let r = c.call("append_scratchpad", json!({"entry": format!("{i} {}", "y".repeat(700))})).await;
        assert!(is_error(&r) && text(&r).contains("disk full"), "{}", text(&r));
    }
    std::fs::remove_file(&filler).unwrap();
    let r = c.call("append_scratchpad", json!({"entry": "space is back"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;
    let said = audit_verify(&ws);
    assert!(said.contains("2 lines"), "the 20 refused calls are one record, then the call: {said}");
    let recs = audit_lines(&ws);
    assert_eq!(
        (recs[0]["args"]["kind"].as_str(), recs[0]["args"]["calls"].as_u64()),
        (Some("unrecorded_calls"), Some(20))
    );
    assert_eq!(temp_files(&ws.root), Vec::<PathBuf>::new());
    drop(fs);
}

// ------------------------------------------------------------------------------------------------
// 3. A locked index, 4. a switched branch, and the start-up reconciliation
// ------------------------------------------------------------------------------------------------

/// With `.git/index.lock` present, commit is a clear refusal that changes nothing (neither the
/// branch nor the ledger); once the lock is gone, the retry commits on the experiment branch and
/// the ledger's `kept` line names that commit.
#[tokio::test]
async fn commit_with_a_locked_index_is_refused_and_changes_nothing() {
    let ws = Ws::new();
    let raised = raised_lr(&ws);
    seed_ok_runs(&ws, std::slice::from_ref(&raised));
    let c = ws.client().await;
    let r = c.call("edit_train", ws.raise_lr_edit()).await;
    assert!(!is_error(&r), "{}", text(&r));
    let before = tip(&ws, BRANCH);
    let lock = ws.root.join(".git/index.lock");
    std::fs::write(&lock, b"").unwrap();

    let r = c.call("commit", json!({"description": "raise LR"})).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("index.lock"), "{}", text(&r));
    assert_eq!(tip(&ws, BRANCH), before, "the branch did not move");
    assert!(kept_commits(&ws).is_empty(), "the ledger has no kept line");
    assert!(lock.exists(), "someone else's lock is left alone");

    std::fs::remove_file(&lock).unwrap();
    let r = c.call("commit", json!({"description": "raise LR"})).await;
    assert!(!is_error(&r), "the retry commits: {}", text(&r));
    stop(c).await;
    let after = tip(&ws, BRANCH);
    assert_ne!(after, before);
    assert_eq!(kept_commits(&ws), std::slice::from_ref(&after), "the ledger names the commit on the branch");
    assert_eq!(git(&ws, &["status", "--porcelain", "--untracked-files=no"]), "", "index and worktree agree");
    assert_eq!(git(&ws, &["show", &format!("{after}:trainer/src/train.rs")]).trim_end(), raised.trim_end());
    audit_verify(&ws);
}

/// The user checks out another branch while the server runs: commit (and revert and edits) are
/// refused naming both branches, and nothing moves; back on the experiment branch, commit works
/// and lands there.
#[tokio::test]
async fn commit_after_a_branch_switch_is_refused_and_changes_nothing() {
    let ws = Ws::new();
    seed_ok_runs(&ws, &[raised_lr(&ws)]);
    let c = ws.client().await;
    let r = c.call("edit_train", ws.raise_lr_edit()).await;
    assert!(!is_error(&r), "{}", text(&r));
    let other = other_branch(&ws);
    let (exp_before, other_before) = (tip(&ws, BRANCH), tip(&ws, &other));
    git(&ws, &["checkout", "-q", &other]);
    let edited = std::fs::read(ws.train_rs()).unwrap();

    for (tool, args) in [
        ("commit", json!({"description": "raise LR"})),
        ("revert", json!({})),
        ("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// x"})),
        ("run_experiment", json!({"description": "on the wrong branch"})),
    ] {
        let r = c.call(tool, args).await;
        assert!(is_error(&r), "{tool}: {}", text(&r));
        assert!(text(&r).contains(&other) && text(&r).contains(BRANCH), "{tool} names both branches: {}", text(&r));
    }
    assert_eq!((tip(&ws, BRANCH), tip(&ws, &other)), (exp_before.clone(), other_before.clone()), "no branch moved");
    assert_eq!(std::fs::read(ws.train_rs()).unwrap(), edited, "train.rs untouched");
    assert!(kept_commits(&ws).is_empty());

    git(&ws, &["checkout", "-q", BRANCH]);
    let r = c.call("commit", json!({"description": "raise LR"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;
    assert_eq!(tip(&ws, &other), other_before, "the other branch never moved");
    assert_ne!(tip(&ws, BRANCH), exp_before);
    assert_eq!(kept_commits(&ws), [tip(&ws, BRANCH)]);
    audit_verify(&ws);
}

/// run_experiment checks room for its records before anything else, then the disk's free space:
/// refused, nothing in the ledger, the refusal audited.
#[tokio::test]
async fn run_experiment_without_room_is_refused_before_anything_runs() {
    let ws = Ws::with_config("min_free_gib = 1000000");
    let c = ws.client().await;
    let r = c.call("run_experiment", json!({"description": "no room"})).await;
    assert!(is_error(&r) && text(&r).contains("GiB free"), "{}", text(&r));
    stop(c).await;
    assert!(ledger_lines(&ws).is_empty());
    assert!(!ws.state("runs/r0001").exists());
    let recs = audit_lines(&ws);
    assert_eq!((recs.len(), recs[0]["outcome"].as_str()), (1, Some("refused")));
}

/// A commit that landed on the branch without its `kept` line (a crash between the two) gets it at
/// the next start, with a repair record in the audit log; verify passes and read_metrics shows it.
#[tokio::test]
async fn a_commit_without_its_kept_line_is_reconciled_at_start() {
    let ws = Ws::new();
    let text_new = raised_lr(&ws);
    seed_ok_runs(&ws, std::slice::from_ref(&text_new));
    let c = ws.client().await;
    c.call("edit_train", ws.raise_lr_edit()).await;
    let r = c.call("commit", json!({"description": "raise LR"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;
    // Take the kept line away again: the commit is on the branch, the ledger does not know it.
    let path = ws.state("runs.jsonl");
    let kept_line = std::fs::read_to_string(&path).unwrap();
    let without: String =
        kept_line.lines().filter(|l| !l.contains("\"event\":\"kept\"")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, without).unwrap();
    assert!(kept_commits(&ws).is_empty());

    let c = ws.client().await;
    let m = c.call("read_metrics", json!({"kept_only": true})).await;
    stop(c).await;
    let s = m.structured_content.unwrap();
    assert_eq!(s["runs"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(kept_commits(&ws), [tip(&ws, BRANCH)]);
    let repairs: Vec<Value> = audit_lines(&ws).into_iter().filter(|r| r["tool"] == "repair").collect();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    assert_eq!(repairs[0]["args"]["commit"], tip(&ws, BRANCH));
    audit_verify(&ws);
    // A second start adds nothing.
    let c = ws.client().await;
    stop(c).await;
    assert_eq!(kept_commits(&ws).len(), 1);
}

// ------------------------------------------------------------------------------------------------
// 6. The smaller points
// ------------------------------------------------------------------------------------------------

/// `.autoresearch/` deleted while the server runs: the next call restores the ledger and the audit
/// log from the server's open files (every acknowledged line), workspace.json too, and says so.
#[tokio::test]
async fn the_state_folder_deleted_under_the_server_is_restored() {
    let ws = Ws::new();
    let c = ws.client().await;
    c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// idea"})).await;
    let r = c.call("revert", json!({"reason": "worse"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let ledger_before = std::fs::read(ws.state("runs.jsonl")).unwrap();
    let audit_before = std::fs::read(ws.state("audit.jsonl")).unwrap();
    std::fs::remove_dir_all(ws.state("")).unwrap();

    let r = c.call("read_metrics", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// again"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    let r = c.call("revert", json!({})).await;
    assert!(!is_error(&r), "{}", text(&r));
    // A second server is still refused: the lock was taken again.
    let o = ws.cli(&["serve"]);
    assert!(!o.status.success() && out(&o).contains("already serving"), "{}", out(&o));
    stop(c).await;
    assert!(std::fs::read(ws.state("runs.jsonl")).unwrap().starts_with(&ledger_before));
    assert!(std::fs::read(ws.state("audit.jsonl")).unwrap().starts_with(&audit_before));
    assert!(ws.state("workspace.json").is_file());
    assert_eq!(ledger_lines(&ws).iter().filter(|l| l["event"] == "reverted").count(), 2);
    let repairs: Vec<Value> = audit_lines(&ws).into_iter().filter(|r| r["tool"] == "repair").collect();
    assert!(!repairs.is_empty(), "the restore is recorded");
    audit_verify(&ws);
    for args in [&["report"][..], &["status"]] {
        let o = ws.cli(args);
        assert!(o.status.success(), "{args:?}: {}", out(&o));
    }
}

/// `-C <not a workspace> report` (and the other readers) fail naming the folder and create nothing.
#[test]
fn commands_on_a_folder_that_is_no_workspace_fail_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in
        [&["report"][..], &["export"], &["audit", "list"], &["audit", "summary"], &["audit", "verify"], &["status"]]
    {
        let o = Command::new(bin()).arg("-C").arg(dir.path()).args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} succeeded on an empty folder: {}", out(&o));
        let said = out(&o);
        assert!(
            said.contains(&dir.path().display().to_string()) && said.contains("not an autoresearch workspace"),
            "{args:?}: {said}"
        );
        assert!(!dir.path().join(".autoresearch").exists(), "{args:?} wrote .autoresearch/");
    }
}

/// A str_replace whose replacement equals the original is refused (it said "edited").
#[tokio::test]
async fn a_str_replace_that_changes_nothing_is_refused() {
    let ws = Ws::new();
    let c = ws.client().await;
    let line = std::fs::read_to_string(ws.train_rs())
        .unwrap()
        .lines()
        .find(|l| l.contains("const LEARNING_RATE"))
        .unwrap()
        .to_string();
    let r = c.call("edit_train", json!({"command": "str_replace", "old_str": line, "new_str": line})).await;
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("identical") && text(&r).contains("nothing"), "{}", text(&r));
    stop(c).await;
    assert_eq!(audit_lines(&ws)[0]["outcome"], "refused");
}

/// Refusals whose reasons differ only past the 120th character are not merged in `audit summary`.
#[tokio::test]
async fn audit_summary_keeps_distinct_refusal_reasons_apart() {
    let ws = Ws::new();
    let c = ws.client().await;
    let stem = "a/".repeat(70);
    for p in [format!("{stem}passwd"), format!("{stem}shadow"), format!("{stem}shadow")] {
        let r = c.call("edit_train", json!({"command": "view", "path": p})).await;
        assert!(is_error(&r));
    }
    stop(c).await;
    let said = out(&ws.cli(&["audit", "summary"]));
    let rows: Vec<&str> = said.lines().filter(|l| l.contains("only trainer/src/train.rs")).collect();
    assert_eq!(rows.len(), 2, "two distinct reasons: {said}");
    assert!(
        rows.iter().any(|r| r.trim_start().starts_with("2 ")) && rows.iter().any(|r| r.trim_start().starts_with("1 ")),
        "{said}"
    );
}

/// `new-workspace` with a bad configuration name fails naming the path and leaves no folder.
#[test]
fn new_workspace_errors_name_the_path_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ws");
    let o = Command::new(bin())
        .arg("-C")
        .arg(repo_root())
        .arg("new-workspace")
        .arg(&target)
        .args(["--profile", "tests", "--config", "no-such-config", "--dataset"])
        .arg(test_dataset())
        .output()
        .unwrap();
    let said = out(&o);
    assert!(!o.status.success(), "{said}");
    assert!(said.contains(&target.display().to_string()), "the error names the workspace path: {said}");
    assert!(said.contains("no-such-config"), "{said}");
    assert!(!target.exists(), "no half-made folder is left: {:?}", std::fs::read_dir(&target).map(|d| d.count()));
}

/// An immutable train.rs: the edit fails naming the file and leaves no temp file; stale temp files
/// of dead processes are removed at start.
#[tokio::test]
async fn an_immutable_train_rs_leaves_no_temp_file_and_stale_ones_are_cleaned() {
    let ws = Ws::new();
    // Stale temp files of a dead process (pid 4194303 is above any pid_max default in use here).
    let stale = [
        ws.root.join("trainer/src/.train.rs.tmp-4194303"),
        ws.state(".audit.head.tmp-4194303"),
        ws.state(".workspace.json.tmp-4194303"),
    ];
    for p in &stale {
        std::fs::write(p, b"").unwrap();
    }
    let c = ws.client().await;
    for p in &stale {
        assert!(!p.exists(), "{} was not cleaned at start", p.display());
    }
    let chattr = |flag: &str| {
        let o = Command::new("chattr").arg(flag).arg(ws.train_rs()).output().unwrap();
        assert!(o.status.success(), "chattr {flag}: {}", out(&o));
    };
    chattr("+i");
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// x"})).await;
    chattr("-i");
    assert!(is_error(&r), "{}", text(&r));
    assert!(text(&r).contains("train.rs"), "{}", text(&r));
    assert_eq!(temp_files(&ws.root), Vec::<PathBuf>::new(), "no temp file left");
    let r = c.call("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// x"})).await;
    assert!(!is_error(&r), "{}", text(&r));
    stop(c).await;
}

// ------------------------------------------------------------------------------------------------
// Crash loop
// ------------------------------------------------------------------------------------------------

/// 50 SIGKILLs of the server at random moments during a session of cheap calls (edits, commits,
/// reverts, notes, metrics), restarting each time: afterwards the ledger, the audit log and git
/// agree and `audit verify` passes.
#[tokio::test]
async fn fifty_sigkills_at_random_moments_lose_nothing() {
    use rand::{Rng, SeedableRng};
    const KILLS: usize = 50;
    const VARIANTS: usize = 300;
    let ws = Ws::new();
    let base = std::fs::read_to_string(ws.train_rs()).unwrap();
    let variant = |k: usize| -> String {
        let mut t = base.clone();
        for i in 1..=k {
            t.push_str(&format!("// step {i}\n"));
        }
        t
    };
    let variants: Vec<String> = (1..=VARIANTS).map(variant).collect();
    seed_ok_runs(&ws, &variants);
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash loop seed {seed} (CRASH_SEED={seed} to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let kept_text = |ws: &Ws| git(ws, &["show", &format!("refs/heads/{BRANCH}:trainer/src/train.rs")]) + "\n";
    let mut acknowledged_commits = 0usize;
    let mut acknowledged_reverts = 0usize;
    let mut acknowledged_calls = 0usize;

    for kill in 0..KILLS {
        let c = ws.client().await;
        let pid = c.pid;
        let after = Duration::from_millis(rng.random_range(0..300));
        let killer = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        });
        loop {
            let current = std::fs::read_to_string(ws.train_rs()).unwrap();
            let kept = kept_text(&ws);
            let n = current.lines().filter(|l| l.starts_with("// step ")).count();
            let (tool, args) = if current != kept && current != variant(n) {
                ("revert", json!({"reason": "junk"}))
            } else if current != kept {
                ("commit", json!({"description": format!("step {n}")}))
            } else {
                match rng.random_range(0..10) {
                    0 => ("append_scratchpad", json!({"entry": format!("note in session {kill}")})),
                    1 => ("read_metrics", json!({"last": 3})),
                    2 => ("edit_train", json!({"command": "insert", "insert_line": 0, "new_str": "// junk"})),
                    _ if n < VARIANTS => (
                        "edit_train",
                        json!({"command": "insert", "insert_line": current.lines().count(), "new_str": format!("// step {}", n + 1)}),
                    ),
                    _ => ("read_metrics", json!({})),
                }
            };
            let Some(r) = try_call(&c, tool, args).await else { break };
            acknowledged_calls += 1;
            if tool == "revert" && text(&r).starts_with("reverted") {
                acknowledged_reverts += 1;
            }
            if tool == "commit" {
                assert!(
                    !is_error(&r),
                    "commit: {} (index.lock holds {:?})",
                    text(&r),
                    std::fs::read_to_string(ws.root.join(".git/index.lock"))
                );
                acknowledged_commits += 1;
            } else if tool != "read_metrics" {
                assert!(!is_error(&r), "{tool}: {}", text(&r));
            }
        }
        killer.await.unwrap();
        let _ = c.service.cancel().await;
    }

    // One last, clean session.
    let c = ws.client().await;
    let m = c.call("read_metrics", json!({"kept_only": true, "last": 100000})).await;
    assert!(!is_error(&m), "{}", text(&m));
    stop(c).await;

    let on_branch = branch_commits(&ws);
    let kept = kept_commits(&ws);
    eprintln!(
        "{} commits on the branch ({acknowledged_commits} acknowledged), {} kept lines",
        on_branch.len(),
        kept.len()
    );
    assert!(on_branch.len() >= acknowledged_commits, "every acknowledged commit is on the branch");
    assert_eq!(kept, on_branch, "one kept line per commit on the branch, in order");
    let kept_runs = m.structured_content.unwrap()["runs"].as_array().unwrap().len();
    assert_eq!(kept_runs, on_branch.len(), "read_metrics shows every kept run");
    let said = audit_verify(&ws);
    eprintln!("{said}");
    let calls = audit_lines(&ws).iter().filter(|r| r["tool"] != "repair").count();
    assert!(
        calls > acknowledged_calls,
        "every answered call is in the audit log ({calls} records, {acknowledged_calls} answered)"
    );
    let reverted = ledger_lines(&ws).iter().filter(|l| l["event"] == "reverted").count();
    assert!(reverted >= acknowledged_reverts, "every answered revert is in the ledger");
    assert_eq!(temp_files(&ws.root), Vec::<PathBuf>::new(), "no temp file left");
    assert!(!ws.root.join(".git/index.lock").exists(), "no stale index lock");
}
