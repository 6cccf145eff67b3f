//! The text operations of `edit_train`: view with line numbers, replace a unique string, insert
//! after a line. Pure functions over the file's text; the caller reads and writes the file.

/// Largest train.rs accepted, before or after an edit.
pub const MAX_FILE_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EditError {
    #[error("old_str was not found in train.rs; view the file and copy the exact text, including whitespace")]
    NotFound,
    #[error("old_str matches {count} times (lines {lines}); include more surrounding text so it matches exactly once")]
    NotUnique { count: usize, lines: String },
    #[error("old_str is empty; give the exact text to replace")]
    EmptyOld,
    #[error("insert_line {line} is past the end of the file ({len} lines); use 0..={len}")]
    LineOutOfRange { line: usize, len: usize },
    #[error(
        "view_range {start}..{end} is invalid for a file of {len} lines (1-based, inclusive, end -1 means last line)"
    )]
    BadRange { start: i64, end: i64, len: usize },
    #[error("the edit would make train.rs {0} bytes, over the {MAX_FILE_BYTES}-byte cap")]
    TooLarge(usize),
    #[error("old_str and new_str are identical: the edit would change nothing, so nothing was edited")]
    NoChange,
    #[error("the text contains a NUL or other control character (U+{0:04X}); only tabs and newlines are allowed")]
    ControlChar(u32),
}

/// Numbered lines (`   12\tcode`), optionally a 1-based inclusive range where end -1 means the last line.
pub fn view(text: &str, range: Option<(i64, i64)>) -> Result<String, EditError> {
    let lines: Vec<&str> = text.lines().collect();
    let len = lines.len();
    let (start, end) = match range {
        None => (1, len),
        Some((s, e)) => {
            let end = if e == -1 { len as i64 } else { e };
            if s < 1 || end < s || end as usize > len {
                return Err(EditError::BadRange { start: s, end: e, len });
            }
            (s as usize, end as usize)
        }
    };
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate().take(end).skip(start - 1) {
        out.push_str(&format!("{:>5}\t{}\n", i + 1, line));
    }
    Ok(out)
}

/// Replaces the one occurrence of `old` by `new`.
pub fn str_replace(text: &str, old: &str, new: &str) -> Result<String, EditError> {
    if old.is_empty() {
        return Err(EditError::EmptyOld);
    }
    check_text(new)?;
    let starts: Vec<usize> = text.match_indices(old).map(|(i, _)| i).collect();
    match starts.len() {
        0 => Err(EditError::NotFound),
        1 if old == new => Err(EditError::NoChange),
        1 => finish(text.replacen(old, new, 1)),
        count => {
            let lines = starts
                .iter()
                .map(|&i| (text[..i].matches('\n').count() + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            Err(EditError::NotUnique { count, lines })
        }
    }
}

/// Inserts `new` as whole lines after line `after` (0 = at the top).
pub fn insert(text: &str, after: usize, new: &str) -> Result<String, EditError> {
    check_text(new)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if after > lines.len() {
        return Err(EditError::LineOutOfRange { line: after, len: lines.len() });
    }
    let mut out = String::with_capacity(text.len() + new.len() + 2);
    for l in &lines[..after] {
        out.push_str(l);
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(new);
    if !new.ends_with('\n') {
        out.push('\n');
    }
    for l in &lines[after..] {
        out.push_str(l);
    }
    finish(out)
}

fn check_text(s: &str) -> Result<(), EditError> {
    match s.chars().find(|c| c.is_control() && *c != '\n' && *c != '\t' && *c != '\r') {
        Some(c) => Err(EditError::ControlChar(c as u32)),
        None => Ok(()),
    }
}

fn finish(s: String) -> Result<String, EditError> {
    if s.len() > MAX_FILE_BYTES {
        return Err(EditError::TooLarge(s.len()));
    }
    Ok(s)
}

/// Unified diff of `new` against `old` with paths labelled as train.rs.
pub fn unified_diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header("a/trainer/src/train.rs", "b/trainer/src/train.rs")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "a\nb\nc\nb\n";

    #[test]
    fn view_numbers_lines_and_checks_range() {
        assert_eq!(view(T, Some((2, 3))).unwrap(), "    2\tb\n    3\tc\n");
        assert_eq!(view(T, Some((4, -1))).unwrap(), "    4\tb\n");
        assert!(matches!(view(T, Some((0, 2))), Err(EditError::BadRange { .. })));
        assert!(matches!(view(T, Some((3, 9))), Err(EditError::BadRange { .. })));
    }

    #[test]
    fn replace_needs_exactly_one_match() {
        assert_eq!(str_replace(T, "c\n", "C\n").unwrap(), "a\nb\nC\nb\n");
        assert_eq!(str_replace(T, "zzz", "y"), Err(EditError::NotFound));
        assert_eq!(str_replace(T, "b", "y"), Err(EditError::NotUnique { count: 2, lines: "2, 4".into() }));
        assert_eq!(str_replace(T, "", "y"), Err(EditError::EmptyOld));
        assert_eq!(str_replace(T, "a", "\u{0}"), Err(EditError::ControlChar(0)));
        assert_eq!(str_replace(T, "c\n", "c\n"), Err(EditError::NoChange));
    }

    #[test]
    fn insert_after_line() {
        assert_eq!(insert(T, 0, "z").unwrap(), "z\na\nb\nc\nb\n");
        assert_eq!(insert(T, 4, "z").unwrap(), "a\nb\nc\nb\nz\n");
        assert_eq!(insert("a", 1, "z").unwrap(), "a\nz\n");
        assert!(matches!(insert(T, 5, "z"), Err(EditError::LineOutOfRange { .. })));
    }

    #[test]
    fn size_cap() {
        let big = "x".repeat(MAX_FILE_BYTES);
        assert!(matches!(str_replace(T, "a", &big), Err(EditError::TooLarge(_))));
    }
}
