//! Trained models as **safetensors** files, which PyTorch, numpy (`safetensors.numpy.load_file`) and any other
//! safetensors reader open.
//!
//! The flat parameter vector is stored as named tensors in model order — softmax: `weight` (classes × features)
//! and `bias`; sparse autoencoder: `w1`, `w2`, `b1`, `b2`; MLP: `layers.{i}.weight` (out × in) and
//! `layers.{i}.bias` per layer; anything else: `params` — plus, optionally, extra tensors that are not parameters
//! (the MLP's input standardisation `input.mean` and `input.scale`: `x' = (x − mean) · scale`). The metadata holds
//! strings: `format` = `cohort-model`, `kind`, `order` (the parameter tensors, comma-separated), `model_sha256`
//! (the hash reports print, of the flat parameters as little-endian bytes), `architecture` and `training` (JSON).
//!
//! [`load`] also reads the format cohort wrote before (magic `COHORTM1`), so older files keep working.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

/// A model's flat parameters as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// `f32` parameters.
    F32(Vec<f32>),
    /// `f64` parameters.
    F64(Vec<f64>),
}

impl Params {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Params::F32(v) => v.len(),
            Params::F64(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SHA-256 of the values as little-endian bytes (the `model_sha256` of reports).
    pub fn sha256(&self) -> String {
        match self {
            Params::F32(v) => cohort::sha256_le(v),
            Params::F64(v) => cohort::sha256_le(v),
        }
    }

    /// The values widened to `f64`.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Params::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Params::F64(v) => v.clone(),
        }
    }

    fn bytes_of(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        match self {
            Params::F32(v) => v[range].iter().flat_map(|x| x.to_le_bytes()).collect(),
            Params::F64(v) => v[range].iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A model read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// `softmax`, `sae`, `mlp`, `linear`, ...
    pub kind: String,
    /// Shapes and hyper-parameters needed to use the parameters (e.g. `{"classes": 10, "features": 784}`).
    pub architecture: Value,
    /// How it was trained (algorithm, iterations, seed, data set, ...).
    pub training: Value,
    /// The flat parameters in model order.
    pub params: Params,
    /// Other tensors stored with the model (`f32`), by name.
    pub extra: Vec<(String, Vec<f32>)>,
    /// SHA-256 of the parameters.
    pub sha256: String,
}

/// Why a model file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    /// A file operation failed.
    #[error("cannot {what} model {}: {source}", path.display())]
    Io {
        /// "read" or "write".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The file is not a model cohort can read, or is damaged.
    #[error("{}: {detail}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
}

type Result<T> = std::result::Result<T, ModelFileError>;

/// The parameter tensors of a model of `kind`: names and shapes in model order.
pub fn layout(kind: &str, architecture: &Value, n: usize) -> Vec<(String, Vec<usize>)> {
    let get = |k: &str| architecture.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let named = |parts: Vec<(&str, Vec<usize>)>| -> Vec<(String, Vec<usize>)> {
        parts.into_iter().map(|(name, shape)| (name.to_string(), shape)).collect()
    };
    let fits = |l: &[(String, Vec<usize>)]| l.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>() == n;
    let out = match (kind, get("classes"), get("features"), get("visible"), get("hidden")) {
        ("softmax", Some(k), Some(d), _, _) => named(vec![("weight", vec![k, d]), ("bias", vec![k])]),
        ("sae", _, _, Some(v), Some(h)) => {
            named(vec![("w1", vec![h, v]), ("w2", vec![v, h]), ("b1", vec![h]), ("b2", vec![v])])
        }
        ("mlp", ..) => {
            let layers: Vec<usize> = architecture
                .get("layers")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as usize).collect())
                .unwrap_or_default();
            layers
                .windows(2)
                .enumerate()
                .flat_map(|(i, w)| {
                    [(format!("layers.{i}.weight"), vec![w[1], w[0]]), (format!("layers.{i}.bias"), vec![w[1]])]
                })
                .collect()
        }
        _ => Vec::new(),
    };
    if !out.is_empty() && fits(&out) {
        out
    } else {
        vec![("params".to_string(), vec![n])]
    }
}

/// Writes a model: its parameters as named tensors (see [`layout`]), `extra` tensors, and the metadata.
pub fn save(
    path: &Path,
    kind: &str,
    architecture: Value,
    training: Value,
    params: &Params,
    extra: &[(&str, &[f32])],
) -> Result<()> {
    let dtype = match params {
        Params::F32(_) => Dtype::F32,
        Params::F64(_) => Dtype::F64,
    };
    let layout = layout(kind, &architecture, params.len());
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut at = 0;
    for (name, shape) in &layout {
        let len: usize = shape.iter().product();
        buffers.push((name.clone(), dtype, shape.clone(), params.bytes_of(at..at + len)));
        at += len;
    }
    for (name, values) in extra {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.to_string(), Dtype::F32, vec![values.len()], bytes));
    }
    let order: Vec<&str> = layout.iter().map(|(n, _)| n.as_str()).collect();
    let metadata: HashMap<String, String> = [
        ("format", "cohort-model".to_string()),
        ("kind", kind.to_string()),
        ("order", order.join(",")),
        ("model_sha256", params.sha256()),
        ("architecture", architecture.to_string()),
        ("training", training.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let invalid = |detail: String| ModelFileError::Invalid { path: path.to_path_buf(), detail };
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v)).map_err(|e| invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|source| ModelFileError::Io { what: "write", path: path.to_path_buf(), source })
}

/// Reads a model file (safetensors, or the older `COHORTM1` format) and checks its parameters against the
/// recorded `model_sha256`.
pub fn load(path: &Path) -> Result<Model> {
    let bytes =
        std::fs::read(path).map_err(|source| ModelFileError::Io { what: "read", path: path.to_path_buf(), source })?;
    let invalid = |detail: String| ModelFileError::Invalid { path: path.to_path_buf(), detail };
    if bytes.starts_with(LEGACY_MAGIC) {
        return legacy(path, &bytes);
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        invalid(format!(
            "not a cohort model file ({e}); save one with --save-model (the file may be truncated or corrupt)"
        ))
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| invalid(format!("the metadata lacks {k:?}; the file is not a cohort model")))
    };
    if meta.get("format").map(String::as_str) != Some("cohort-model") {
        return Err(invalid("the metadata does not say format = cohort-model; save models with --save-model".into()));
    }
    let json = |k: &str| -> Result<Value> {
        serde_json::from_str(&field(k)?).map_err(|e| invalid(format!("{k:?} in the metadata is not JSON ({e})")))
    };
    let (kind, architecture, training, sha256) =
        (field("kind")?, json("architecture")?, json("training")?, field("model_sha256")?);
    let order = field("order")?;
    let mut f32s = Vec::new();
    let mut f64s = Vec::new();
    for name in order.split(',').filter(|n| !n.is_empty()) {
        let t = st.tensor(name).map_err(|e| invalid(format!("tensor {name:?}: {e}")))?;
        match t.dtype() {
            Dtype::F32 => f32s.extend(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            Dtype::F64 => f64s.extend(
                t.data().chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
            ),
            other => return Err(invalid(format!("tensor {name:?} has type {other:?}; expected F32 or F64"))),
        }
    }
    let params = match (f32s.is_empty(), f64s.is_empty()) {
        (_, true) => Params::F32(f32s),
        (true, false) => Params::F64(f64s),
        _ => return Err(invalid("parameters mix F32 and F64 tensors".into())),
    };
    let mut extra = Vec::new();
    for (name, t) in st.tensors() {
        if !order.split(',').any(|n| n == name) && t.dtype() == Dtype::F32 {
            extra
                .push((name, t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()));
        }
    }
    extra.sort_by(|a, b| a.0.cmp(&b.0));
    if params.sha256() != sha256 {
        return Err(invalid("the parameters do not match their recorded model_sha256; the file is corrupt".into()));
    }
    Ok(Model { kind, architecture, training, params, extra, sha256 })
}

const LEGACY_MAGIC: &[u8; 8] = b"COHORTM1";

/// The format before safetensors: magic, `u32` header length, JSON header `{kind, meta, count, elem, sha256}`,
/// little-endian values.
fn legacy(path: &Path, bytes: &[u8]) -> Result<Model> {
    let invalid = |detail: String| ModelFileError::Invalid { path: path.to_path_buf(), detail };
    let n = bytes.get(8..12).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let header: Value = bytes
        .get(12..12 + n)
        .ok_or_else(|| invalid(format!("truncated header (file ends at byte {})", bytes.len())))
        .and_then(|h| serde_json::from_slice(h).map_err(|e| invalid(format!("corrupt header ({e})"))))?;
    let body = &bytes[12 + n..];
    let count = header["count"].as_u64().unwrap_or(u64::MAX) as usize;
    let params = match header["elem"].as_str() {
        Some("f32") if count.checked_mul(4) == Some(body.len()) => {
            Params::F32(body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        Some("f64") if count.checked_mul(8) == Some(body.len()) => Params::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        _ => {
            return Err(invalid(format!(
                "{} parameter bytes for {header}; the file is truncated or corrupt",
                body.len()
            )))
        }
    };
    let sha256 = header["sha256"].as_str().unwrap_or_default().to_string();
    if params.sha256() != sha256 {
        return Err(invalid("the parameters do not match their recorded sha256; the file is corrupt".into()));
    }
    Ok(Model {
        kind: header["kind"].as_str().unwrap_or_default().to_string(),
        architecture: header["meta"].clone(),
        training: json!({}),
        params,
        extra: Vec::new(),
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_round_trip_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let params = Params::F64((0..2 * 3 + 2).map(|i| i as f64 * 0.5).collect());
        let arch = json!({"classes": 2, "features": 3});
        save(&path, "softmax", arch.clone(), json!({"iterations": 4}), &params, &[("input.mean", &[1.0, 2.0])])
            .unwrap();
        let m = load(&path).unwrap();
        assert_eq!((m.kind.as_str(), &m.architecture, &m.params), ("softmax", &arch, &params));
        assert_eq!(m.extra, vec![("input.mean".to_string(), vec![1.0, 2.0])]);
        let st_bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&st_bytes).unwrap();
        assert_eq!(st.tensor("weight").unwrap().shape(), &[2, 3]);

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 9; // inside the parameters, not the extra tensor
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("corrupt"));
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("truncated"));
        std::fs::write(&path, b"hello").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("not a cohort model"));

        // The older format still reads.
        let values = [1.5f64, -2.0];
        let header = json!({"kind": "linear", "meta": {"features": 1}, "count": 2, "elem": "f64",
                            "sha256": cohort::sha256_le(&values)})
        .to_string();
        let mut old = LEGACY_MAGIC.to_vec();
        old.extend((header.len() as u32).to_le_bytes());
        old.extend(header.as_bytes());
        old.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, old).unwrap();
        let m = load(&path).unwrap();
        assert_eq!((m.kind.as_str(), m.params), ("linear", Params::F64(values.to_vec())));
    }
}
