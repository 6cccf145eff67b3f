//! `edit_train`: view, replace or insert in train.rs, answered with the diff against the kept version.

use serde_json::Value;

use super::args::{EditCommand, EditTrainArgs};
use super::{Reply, Service};
use crate::edit::{self, EditError};

impl Service {
    pub fn edit_train(&self, args: EditTrainArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("edit_train", via, json, 0, || self.edit_inner(&args))
    }

    fn edit_inner(&self, a: &EditTrainArgs) -> Reply {
        if let Some(p) = a.path.as_deref()
            && !matches!(p, "trainer/src/train.rs" | "train.rs" | "src/train.rs" | "./trainer/src/train.rs")
        {
            return Reply::refused(format!(
                "refused: only trainer/src/train.rs can be edited, not {p:?}. The harness, data and server are fixed."
            ));
        }
        if a.command != EditCommand::View
            && let Some(id) = self.run_in_flight()
        {
            return Reply::refused(format!("refused: run {id} is in flight; edit after it finishes"));
        }
        let ws = self.ws.lock().unwrap();
        if a.command != EditCommand::View
            && let Some(r) = self.off_branch(&ws)
        {
            return r;
        }
        let text = match ws.read_train().map(String::from_utf8) {
            Err(e) => {
                return Reply::refused(format!(
                    "refused: cannot read train.rs safely: {e:#}. `revert` restores the kept version."
                ));
            }
            Ok(Err(e)) => {
                return Reply::refused(format!(
                    "refused: train.rs is not valid UTF-8 (at byte {}); `revert` restores the kept version",
                    e.utf8_error().valid_up_to()
                ));
            }
            Ok(Ok(t)) => t,
        };
        let edit_err = |e: EditError| Reply::refused(format!("refused: {e}"));
        let new = match a.command {
            EditCommand::View => {
                let range = match a.view_range.as_deref() {
                    None => None,
                    Some([s, e]) => Some((*s, *e)),
                    Some(_) => return Reply::refused("refused: view_range must be [first, last]"),
                };
                return match edit::view(&text, range) {
                    Ok(v) => Reply::ok(v),
                    Err(e) => edit_err(e),
                };
            }
            EditCommand::StrReplace => {
                let (Some(old), Some(new)) = (a.old_str.as_deref(), a.new_str.as_deref()) else {
                    return Reply::refused("refused: str_replace needs old_str and new_str");
                };
                edit::str_replace(&text, old, new)
            }
            EditCommand::Insert => {
                let (Some(line), Some(new)) = (a.insert_line, a.new_str.as_deref()) else {
                    return Reply::refused("refused: insert needs insert_line and new_str");
                };
                edit::insert(&text, line, new)
            }
        };
        let new = match new {
            Ok(n) => n,
            Err(e) => return edit_err(e),
        };
        if let Err(e) = ws.write_train(&new) {
            return Reply::error(format!("could not write train.rs, it is unchanged: {e:#}"));
        }
        let kept = ws.kept_train().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let diff = edit::unified_diff(&kept, &new);
        Reply::ok(format!(
            "edited train.rs ({} lines). Diff against the last kept commit:\n{}",
            new.lines().count(),
            if diff.is_empty() { "(none: identical to the kept version)\n".into() } else { diff }
        ))
    }
}
