//! `sandboxed-experiment` and `unsandboxed-experiment`, the GPU bundle's path (scripts/gpu-bundle.sh,
//! run.sh, gpu-check.sh): the server's pipeline with the trainer's prebuilt binaries, on the `local`
//! backend and as plain child processes. On CPU, tests profile.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

fn python_env() -> PathBuf {
    let out = Command::new("bash").arg(repo_root().join("scripts/python-env.sh")).output().unwrap();
    assert!(out.status.success(), "scripts/python-env.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Builds `train` and `prepare` from a fresh workspace's copy of the trainer, the way the sandboxed build
/// does (shared target dir, its lock held, train.rs touched so no other workspace's `train` is reused),
/// and copies them into `dest`.
fn build_trainer(ws: &Ws, dest: &Path) {
    let target = repo_root().join("trainer/target");
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join(".autoresearch-build.lock")).unwrap();
    fs2::FileExt::lock_exclusive(&lock).unwrap();
    std::fs::File::options()
        .write(true)
        .open(ws.train_rs())
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let env = python_env();
    let path = format!("{}:{}", env.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("cargo")
        .args(["build", "--release", "--offline", "--locked", "--bins", "--manifest-path"])
        .arg(ws.root.join("trainer/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env("LIBTORCH_USE_PYTORCH", "1")
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "trainer build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    for b in ["train", "prepare"] {
        std::fs::copy(target.join("release").join(b), dest.join(b)).unwrap();
    }
    drop(lock);
}

fn prebuilt(command: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin()).arg("-C").arg(repo_root()).arg(command).args(args).output().unwrap()
}

/// What train.rs prints in its train phase: whether the repository's files are visible (they are not
/// in the sandbox's minimal root) and whether it runs as root (the sandbox's job is nobody).
fn host_probe(ws: &Ws) {
    let src = std::fs::read_to_string(ws.train_rs()).unwrap();
    let probe = format!(
        "if std::env::var(\"AR_PHASE\").as_deref() == Ok(\"train\") {{ \
         eprintln!(\"HOST-PROBE repo-visible={{}} uid={{}}\", std::path::Path::new({:?}).exists(), unsafe {{ libc::getuid() }}); }}",
        repo_root().join("Cargo.toml")
    );
    std::fs::write(ws.train_rs(), insert_at_main_start(&src, &probe)).unwrap();
}

fn probe_line(run_dir: &Path) -> String {
    let log = std::fs::read_to_string(run_dir.join("train.log")).unwrap();
    log.lines().find(|l| l.contains("HOST-PROBE ")).unwrap_or_else(|| panic!("no probe line:\n{log}")).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn prebuilt_binaries_score_far_better_than_random_sandboxed_and_run_unsandboxed() {
    let _slot = experiment_slot().await;
    let ws = Ws::new();
    host_probe(&ws);
    let bins = tempfile::tempdir().unwrap();
    build_trainer(&ws, bins.path());
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("summary.json");
    let lib = torch_lib();
    let dataset = test_dataset();
    // A budget far above the ~20 s the 400 steps take, so a loaded machine still trains fully. The
    // tokenizer is left to its default (the Python environment's MiniLM, through -C the repository).
    let args: Vec<&std::ffi::OsStr> = vec![
        "--trainer-bin".as_ref(),
        bins.path().as_os_str(),
        "--dataset".as_ref(),
        dataset.as_os_str(),
        "--profile".as_ref(),
        "tests".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--budget".as_ref(),
        "900".as_ref(),
        "--torch-lib".as_ref(),
        lib.as_os_str(),
        "--work".as_ref(),
        work.path().as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ];
    // The whole experiment in the local sandbox, as scripts/gpu-check.sh runs it on a GPU machine.
    let out = prebuilt("sandboxed-experiment", &args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    assert!(out.status.success(), "sandboxed-experiment failed:\n{stderr}");
    assert!(!stderr.contains("UNSANDBOXED") && stdout.contains("sandboxed experiment (local backend"), "{stdout}");
    for needle in
        ["mean rank", "random", "R@1", "R@10", "steps/s", "peak memory", "embed-images", "total", "not training"]
    {
        assert!(stdout.contains(needle), "{needle:?} missing from the summary:\n{stdout}");
    }
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(s["sandboxed"], true);
    let m = &s["metrics"];
    let (mean, random) = (m["mean_rank"].as_f64().unwrap(), m["random_mean_rank"].as_f64().unwrap());
    assert!(mean < 0.6 * random, "trained mean rank {mean} is not far below random {random}");
    assert_eq!(m["n"].as_u64(), Some(200));
    assert_eq!(s["reported"]["steps"].as_u64(), Some(400), "the whole baseline trained within the budget");
    assert_eq!(s["reported"]["device"], "cpu");
    assert!(s["phases"]["prepare"].as_f64().is_some(), "the first run prepares the data");
    assert!(s["phases"]["train"].as_f64().unwrap() > 0.0);
    let p = &s["phases"];
    assert!(p["train_loop"].as_f64().unwrap() > 0.5 * p["train"].as_f64().unwrap(), "{p}");
    assert!(p["build"].is_null(), "prebuilt binaries are not built: {p}");
    let probe = probe_line(Path::new(s["run_dir"].as_str().unwrap()));
    assert!(probe.contains("repo-visible=false") && !probe.contains("uid=0"), "inside the sandbox: {probe}");

    // The same binaries unsandboxed, briefly: it says so loudly, sees the host, reuses the prepared
    // data; its logs are in their own run folder.
    let again =
        prebuilt("unsandboxed-experiment", &[&args[..8], &["--budget".as_ref(), "5".as_ref()], &args[10..]].concat());
    let (stdout2, stderr2) = (String::from_utf8_lossy(&again.stdout), String::from_utf8_lossy(&again.stderr));
    assert!(again.status.success(), "{stderr2}");
    assert!(stderr2.contains("UNSANDBOXED") && stdout2.contains("UNSANDBOXED"), "says loudly that there is no sandbox");
    assert!(stdout2.contains("prepare cached"), "{stdout2}");
    let s2: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(s2["sandboxed"], false);
    let probe = probe_line(Path::new(s2["run_dir"].as_str().unwrap()));
    assert!(probe.contains("repo-visible=true"), "a plain child process sees the host: {probe}");
    let runs = std::fs::read_dir(work.path().join("runs")).unwrap().count();
    assert_eq!(runs, 2);
}

#[test]
fn unsandboxed_experiment_errors_say_what_to_do() {
    let dataset = test_dataset();
    let work = tempfile::tempdir().unwrap();
    let run = |bins: &Path, extra: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.arg("-C").arg(repo_root()).arg("unsandboxed-experiment").arg("--trainer-bin").arg(bins);
        cmd.arg("--dataset").arg(&dataset).arg("--work").arg(work.path()).args(extra);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let empty = tempfile::tempdir().unwrap();
    let err = run(empty.path(), &[]);
    assert!(err.contains("train") && err.contains("cargo build --release"), "{err}");

    // Binaries present (placeholders: nothing runs before the checks below).
    let bins = tempfile::tempdir().unwrap();
    for b in ["train", "prepare"] {
        std::fs::write(bins.path().join(b), "").unwrap();
    }
    let err = run(bins.path(), &["--torch-lib", empty.path().to_str().unwrap()]);
    assert!(err.contains("libtorch.so") && err.contains("torch"), "{err}");
    let err = run(bins.path(), &["--profile", "huge"]);
    assert!(err.contains("use tests, cpu or gpu"), "{err}");
    if !Path::new("/dev/nvidia0").exists() && !Path::new("/dev/nvidiactl").exists() {
        let lib = torch_lib();
        let err = run(bins.path(), &["--device", "cuda", "--torch-lib", lib.to_str().unwrap()]);
        assert!(err.contains("--device cuda") && err.contains("--device cpu"), "{err}");
    }
}
