//! Parsing ODVG JSONL annotations (one object a line):
//! `{"filename","height","width","grounding":{"caption","regions":[{"bbox":[x1,y1,x2,y2],"phrase"}]}}`
//! with absolute-pixel xyxy boxes.
//!
//! As the reference's `load_annotations`, entries without a caption or without regions are skipped;
//! here every skip is counted under a reason instead of crashing on malformed lines.

use serde_json::Value;
use std::collections::BTreeMap;

/// One region: a box in absolute pixels and its phrase.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// `[x1, y1, x2, y2]` in pixels.
    pub bbox: [f64; 4],
    /// The phrase grounded in the box.
    pub phrase: String,
}

/// One usable entry of an ODVG file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Image file name, relative to the dataset's `images/`.
    pub filename: String,
    /// Image width in pixels as annotated (`None` if absent: the decoded width is used).
    pub width: Option<f64>,
    /// Image height in pixels as annotated.
    pub height: Option<f64>,
    /// The caption.
    pub caption: String,
    /// The regions, in file order (at least one).
    pub regions: Vec<Region>,
}

/// Entries kept and skips counted by reason.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    /// Usable entries, in file order.
    pub entries: Vec<Entry>,
    /// Reason -> number of lines skipped for it.
    pub skipped: BTreeMap<String, u64>,
}

fn positive(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64).filter(|x| x.is_finite() && *x > 0.0)
}

fn region(v: &Value) -> Option<Region> {
    let bbox = v.get("bbox")?.as_array()?;
    if bbox.len() != 4 {
        return None;
    }
    let mut b = [0.0; 4];
    for (slot, x) in b.iter_mut().zip(bbox) {
        *slot = x.as_f64().filter(|x| x.is_finite())?;
    }
    let phrase = v.get("phrase")?.as_str()?.to_string();
    Some(Region { bbox: b, phrase })
}

/// Parses one line; `Err(reason)` when it is skipped.
pub fn parse_line(line: &str) -> Result<Entry, &'static str> {
    let v: Value = serde_json::from_str(line).map_err(|_| "invalid_json")?;
    let filename =
        v.get("filename").and_then(Value::as_str).filter(|f| !f.is_empty()).ok_or("no_filename")?.to_string();
    let grounding = v.get("grounding").ok_or("no_caption")?;
    let caption = grounding
        .get("caption")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or("no_caption")?
        .to_string();
    let raw =
        grounding.get("regions").and_then(Value::as_array).filter(|r| !r.is_empty()).ok_or("no_regions")?;
    let regions: Vec<Region> = raw.iter().filter_map(region).collect();
    if regions.is_empty() {
        return Err("no_valid_regions");
    }
    Ok(Entry {
        filename,
        width: positive(v.get("width")),
        height: positive(v.get("height")),
        caption,
        regions,
    })
}

/// Parses a whole JSONL text; blank lines are ignored.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Ok(e) => out.entries.push(e),
            Err(reason) => *out.skipped.entry(reason.to_string()).or_default() += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_with_reasons() {
        let text = r#"{"filename":"a.png","height":10,"width":20,"grounding":{"caption":"a cat","regions":[{"bbox":[1,2,3,4],"phrase":"cat"}]}}
{"filename":"b.png","height":10,"width":20,"grounding":{"caption":"","regions":[{"bbox":[1,2,3,4],"phrase":"cat"}]}}
{"filename":"c.png","height":10,"width":20,"grounding":{"caption":"x","regions":[]}}
{"filename":"d.png","grounding":{"caption":"x","regions":[{"bbox":[1,2,3],"phrase":"cat"}]}}
not json

"#;
        let p = parse(text);
        assert_eq!(p.entries.len(), 1);
        assert_eq!(p.entries[0].regions[0].bbox, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(p.entries[0].width, Some(20.0));
        assert_eq!(p.skipped["no_caption"], 1);
        assert_eq!(p.skipped["no_regions"], 1);
        assert_eq!(p.skipped["no_valid_regions"], 1);
        assert_eq!(p.skipped["invalid_json"], 1);
    }
}
