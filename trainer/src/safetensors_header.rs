//! Reading one small tensor of a safetensors file without loading the whole file.
//!
//! The layout is: 8 bytes little-endian header length `n`, `n` bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the data;
//! offsets count from the end of the header.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Upper bound on a header we are willing to parse (safetensors itself caps it at 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// The JSON header of a safetensors file.
pub fn read_header(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).context("reading the header length")?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        bail!("header of {n} bytes is too large");
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).context("reading the header")?;
    match serde_json::from_slice(&buf).context("parsing the header")? {
        serde_json::Value::Object(m) => Ok(m),
        _ => bail!("the header is not a JSON object"),
    }
}

/// The value of a one-element i64 tensor `key` (shape `()` or `(1,)`).
pub fn read_i64_scalar(path: &Path, key: &str) -> Result<i64> {
    let header = read_header(path)?;
    let entry = header.get(key).with_context(|| format!("no tensor {key:?}"))?;
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
    if dtype != "I64" {
        bail!("tensor {key:?} has dtype {dtype}, expected I64");
    }
    let offsets: Vec<u64> = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    if offsets.len() != 2 || offsets[1] - offsets[0] != 8 {
        bail!("tensor {key:?} is not a single i64");
    }
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    f.seek(SeekFrom::Start(8 + n + offsets[0]))?;
    let mut v = [0u8; 8];
    f.read_exact(&mut v)?;
    Ok(i64::from_le_bytes(v))
}
