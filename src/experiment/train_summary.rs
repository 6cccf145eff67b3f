//! What the trainer says about its train phase (`train_summary.json`): the steps, loss, memory and
//! device it reports, and the timeline that splits the phase's wall time.

use std::path::Path;

use crate::fsutil::read_capped;
use crate::ledger::Reported;

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The train phase's wall time split at the landmarks of the harness's timeline (train_summary.json,
/// `eclip_harness::timeline`), with the server's clock at both ends: spawn to first step, the loop,
/// and the rest. Written by the trainer, so clamped into the server-measured wall time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainSplit {
    /// Spawn to the first step.
    pub startup: f64,
    /// Spawn to the harness's start (sandbox set-up, exec, libtorch loaded).
    pub sandbox_start: f64,
    /// Loading the prepared split onto the device.
    pub data_load: Option<f64>,
    /// First step to the end of the last.
    pub r#loop: f64,
    /// Checkpoint, summary, exit.
    pub exit: f64,
}

impl TrainSplit {
    /// From a parsed train_summary.json ([`read_train_summary`]); `None` without a usable timeline.
    pub(crate) fn from_summary(summary: &serde_json::Value, spawned_unix: f64, wall: f64) -> Option<TrainSplit> {
        let t = summary.get("timeline")?;
        let num = |k: &str| t.get(k).and_then(|x| x.as_f64()).filter(|x| x.is_finite() && *x >= 0.0);
        Self::from_marks(
            num("started_unix")? - spawned_unix,
            num("data_loaded_s"),
            num("first_step_s")?,
            num("loop_end_s")?,
            wall,
        )
    }

    /// `started` is the process's harness start relative to the spawn; the marks are relative to it.
    fn from_marks(started: f64, data: Option<f64>, first: f64, end: f64, wall: f64) -> Option<TrainSplit> {
        let clamp = |x: f64| x.clamp(0.0, wall);
        let startup = clamp(started.max(0.0) + first);
        let r#loop = clamp(end - first).min(wall - startup);
        (end >= first).then(|| TrainSplit {
            startup,
            sandbox_start: started.clamp(0.0, startup),
            data_load: data.map(|d| d.min(first)),
            r#loop,
            exit: (wall - startup - r#loop).max(0.0),
        })
    }
}

/// The train phase's `train_summary.json` in `out`, parsed; `None` when missing or unreadable (then
/// nothing is reported).
pub(crate) fn read_train_summary(out: &Path) -> Option<serde_json::Value> {
    let bytes = read_capped(&out.join("train_summary.json"), 64 * 1024).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What the trainer's summary says about itself.
pub(crate) fn reported(v: &serde_json::Value) -> Reported {
    Reported {
        steps: v.get("steps").and_then(|x| x.as_u64()),
        final_loss: v.get("final_loss").and_then(|x| x.as_f64()),
        peak_memory_bytes: v.get("peak_memory_bytes").and_then(|x| x.as_u64()),
        device: v
            .get("device")
            .and_then(|x| x.as_str())
            .map(|s| s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == ':').take(16).collect()),
        budget_cut: v.get("budget_cut").and_then(|x| x.as_bool()).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_split_adds_up_to_the_wall_time_and_clamps_what_the_trainer_wrote() {
        // Harness up 0.5 s after the spawn, data at 1 s, first step at 2 s, loop end at 12 s; exit at 13 s.
        let s = TrainSplit::from_marks(0.5, Some(1.0), 2.0, 12.0, 13.0).unwrap();
        assert_eq!((s.startup, s.sandbox_start, s.data_load, s.r#loop), (2.5, 0.5, Some(1.0), 10.0));
        assert!((s.exit - 0.5).abs() < 1e-9);
        // A clock skew or a lying trainer cannot make a part negative or longer than the phase.
        let s = TrainSplit::from_marks(-3.0, Some(50.0), 2.0, 500.0, 13.0).unwrap();
        assert_eq!((s.startup, s.sandbox_start, s.data_load, s.r#loop, s.exit), (2.0, 0.0, Some(2.0), 11.0, 0.0));
        assert_eq!(TrainSplit::from_marks(0.1, None, 5.0, 4.0, 13.0), None, "loop end before first step");
    }

    #[test]
    fn train_split_reads_the_summary_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_summary.json");
        let t0 = 1_700_000_000.0;
        let json = serde_json::json!({"steps": 3, "timeline": {"started_unix": t0 + 0.25, "data_loaded_s": 0.5,
            "first_step_s": 1.0, "loop_end_s": 4.0}});
        std::fs::write(&path, json.to_string()).unwrap();
        let summary = read_train_summary(dir.path()).unwrap();
        let s = TrainSplit::from_summary(&summary, t0, 5.0).unwrap();
        assert_eq!((s.startup, s.data_load, s.r#loop, s.exit), (1.25, Some(0.5), 3.0, 0.75));
        assert_eq!((reported(&summary).steps, reported(&summary).budget_cut), (Some(3), false));
        std::fs::write(&path, r#"{"steps": 3, "budget_cut": true}"#).unwrap();
        assert!(reported(&read_train_summary(dir.path()).unwrap()).budget_cut);
        std::fs::write(&path, r#"{"steps": 3}"#).unwrap();
        let summary = read_train_summary(dir.path()).unwrap();
        assert_eq!(TrainSplit::from_summary(&summary, t0, 5.0), None, "an older trainer without a timeline");
    }
}
