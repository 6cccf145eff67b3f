//! `append_scratchpad`: appends a dated note to scratchpad.md, whole or not at all.

use std::io::Write;

use chrono::Utc;
use serde_json::Value;

use super::args::{MAX_SCRATCHPAD_ENTRY, ScratchpadArgs};
use super::{Reply, Service};
use crate::fsutil::open_append;

impl Service {
    pub fn append_scratchpad(&self, args: ScratchpadArgs, via: &str) -> Reply {
        let json = serde_json::to_value(&args).unwrap_or(Value::Null);
        self.audited("append_scratchpad", via, json, 0, || {
            let entry = args.entry.trim_end();
            if entry.trim().is_empty() {
                return Reply::refused("refused: the entry is empty");
            }
            if entry.len() > MAX_SCRATCHPAD_ENTRY {
                return Reply::refused(format!(
                    "refused: the entry is {} bytes, over the {MAX_SCRATCHPAD_ENTRY}-byte cap; split or shorten it",
                    entry.len()
                ));
            }
            if let Some(c) = entry.chars().find(|c| c.is_control() && *c != '\n' && *c != '\t') {
                return Reply::refused(format!(
                    "refused: the entry contains a control character (U+{:04X}); use plain text",
                    c as u32
                ));
            }
            let block = format!("\n## {}\n{}\n", Utc::now().format("%Y-%m-%d %H:%M:%S UTC"), entry);
            let res = open_append(&self.paths.scratchpad()).and_then(|mut f| {
                let len = f.metadata()?.len();
                let written = f.write_all(block.as_bytes()).and_then(|_| f.sync_data());
                if let Err(e) = written {
                    // Never half an entry: cut back to where it was.
                    let _ = f.set_len(len);
                    return Err(e.into());
                }
                Ok(())
            });
            match res {
                Ok(()) => Reply::ok(format!("appended {} bytes to scratchpad.md", block.len())),
                Err(e) => Reply::error(format!("cannot append to scratchpad.md, it is unchanged: {e:#}")),
            }
        })
    }
}
