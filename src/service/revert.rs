//! `revert`: puts the kept train.rs back and keeps the discarded diff.

use chrono::Utc;
use serde_json::Value;

use super::args::{MAX_DESCRIPTION, RevertArgs};
use super::{Reply, Service};
use crate::edit;
use crate::fsutil::{one_line, sha256_hex, write_atomic};
use crate::ledger::Event;

impl Service {
    pub fn revert(&self, args: RevertArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("revert", via, json, 1, || self.revert_inner(&args))
    }

    fn revert_inner(&self, args: &RevertArgs) -> Reply {
        if let Some(r) = &args.reason
            && let Err(e) = one_line(r, MAX_DESCRIPTION)
        {
            return Reply::refused(format!("refused: reason: {e}"));
        }
        if let Some(id) = self.run_in_flight() {
            return Reply::refused(format!("refused: run {id} is in flight; revert after it finishes"));
        }
        let ws = self.ws.lock().unwrap();
        if let Some(r) = self.off_branch(&ws) {
            return r;
        }
        let kept = match ws.kept_at(&self.state.branch) {
            Ok((_, k)) => k,
            Err(e) => return Reply::error(format!("cannot read the kept train.rs: {e:#}")),
        };
        // An unreadable train.rs (symlink, too big, not UTF-8) is exactly what revert is for.
        let current = ws.read_train().unwrap_or_default();
        if current == kept {
            return Reply::ok("train.rs already equals the last kept commit; nothing to revert");
        }
        let diff = edit::unified_diff(&String::from_utf8_lossy(&kept), &String::from_utf8_lossy(&current));
        let hash = sha256_hex(&current);
        let file = self.paths.reverts().join(format!("{}-{}.diff", Utc::now().format("%Y%m%dT%H%M%S%.3f"), &hash[..8]));
        let saved = std::fs::create_dir_all(self.paths.reverts())
            .map_err(anyhow::Error::from)
            .and_then(|_| write_atomic(&file, diff.as_bytes()));
        if let Err(e) = saved {
            return Reply::error(format!("cannot save the discarded diff, nothing reverted: {e:#}"));
        }
        // The kept bytes are renamed over whatever sits at the path (a planted symlink is replaced,
        // not followed), so train.rs never goes missing, even if the server dies here. Only a
        // folder must go first.
        if std::fs::symlink_metadata(self.paths.train_rs()).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(self.paths.train_rs());
        }
        if let Err(e) = write_atomic(&self.paths.train_rs(), &kept) {
            return Reply::error(format!("cannot restore train.rs: {e:#}"));
        }
        let ev = Event::Reverted {
            at: Utc::now(),
            train_hash: hash,
            diff_file: self.paths.relative(&file).to_path_buf(),
            audit: self.audit.head(),
        };
        if let Err(e) = self.ledger.lock().unwrap().append(ev) {
            return Reply::error(format!("reverted, but cannot write the ledger: {e:#}"));
        }
        Reply::ok(format!(
            "reverted train.rs to the last kept commit; the discarded diff ({} lines) is kept in the ledger",
            diff.lines().count()
        ))
    }
}
