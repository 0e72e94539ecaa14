//! Saved models (`--save-model`, `cohort eval --model`): a small self-describing file.
//!
//! ```text
//! 8 bytes  magic "COHORTM1"
//! 4 bytes  u32 LE length of the JSON header
//! N bytes  JSON header: {"kind": "...", "meta": {...}, "count": n, "elem": "f64", "sha256": "..."}
//! rest     the parameters, little-endian, `count` values of `elem`
//! ```
//!
//! `sha256` is the model hash reports print (`model_sha256`), so a saved file can be matched to its report.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"COHORTM1";

/// The JSON header of a saved model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelHeader {
    /// Model kind, e.g. `softmax`, `sae`, `mlp`, `linear`.
    pub kind: String,
    /// Hyper-parameters and shapes needed to use the parameters.
    pub meta: serde_json::Value,
    /// Number of parameters.
    pub count: usize,
    /// Element type of the parameters (`f32` or `f64`).
    pub elem: String,
    /// SHA-256 of the parameters as little-endian bytes.
    pub sha256: String,
}

/// A model's parameters as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// `f32` parameters.
    F32(Vec<f32>),
    /// `f64` parameters.
    F64(Vec<f64>),
}

/// Writes a model file.
pub fn save(path: &Path, kind: &str, meta: serde_json::Value, params: &Params) -> Result<()> {
    let (elem, count, sha, bytes) = match params {
        Params::F32(p) => {
            ("f32", p.len(), cohort::sha256_le(p), p.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        }
        Params::F64(p) => ("f64", p.len(), cohort::sha256_le(p), p.iter().flat_map(|v| v.to_le_bytes()).collect()),
    };
    let header = ModelHeader { kind: kind.into(), meta, count, elem: elem.into(), sha256: sha };
    let json = serde_json::to_vec(&header)?;
    let mut out = Vec::with_capacity(12 + json.len() + bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes);
    std::fs::write(path, out).with_context(|| format!("cannot write model {}", path.display()))
}

/// Reads a model file, checking its magic, sizes and hash.
pub fn load(path: &Path) -> Result<(ModelHeader, Params)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
    let p = path.display();
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        bail!("{p} is not a cohort model file (it should start with {:?}); save one with --save-model", "COHORTM1");
    }
    let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let json =
        bytes.get(12..12 + n).with_context(|| format!("{p}: truncated header (file ends at byte {})", bytes.len()))?;
    let header: ModelHeader = serde_json::from_slice(json).with_context(|| format!("{p}: corrupt header"))?;
    let body = &bytes[12 + n..];
    let size = match header.elem.as_str() {
        "f32" => 4,
        "f64" => 8,
        other => bail!("{p}: unknown parameter type {other:?}"),
    };
    if header.count.checked_mul(size) != Some(body.len()) {
        bail!(
            "{p}: {} parameter bytes, expected {} ({} × {}); the file is truncated or corrupt",
            body.len(),
            header.count.saturating_mul(size),
            header.count,
            header.elem
        );
    }
    let params = if size == 4 {
        Params::F32(body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    } else {
        Params::F64(body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    };
    let sha = match &params {
        Params::F32(v) => cohort::sha256_le(v),
        Params::F64(v) => cohort::sha256_le(v),
    };
    if sha != header.sha256 {
        bail!("{p}: parameters do not match their recorded sha256; the file is corrupt");
    }
    Ok((header, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.cohort");
        let params = Params::F64(vec![1.5, -2.0, 3.25]);
        save(&path, "linear", serde_json::json!({"features": 2}), &params).unwrap();
        let (h, p) = load(&path).unwrap();
        assert_eq!((h.kind.as_str(), h.count, p), ("linear", 3, params));
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("corrupt"));
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("truncated"));
        std::fs::write(&path, b"hello").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("not a cohort model"));
    }
}
