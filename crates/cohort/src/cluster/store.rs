//! Chunks resident on a worker, by dataset. Loaded once, reused by every round until dropped.

use std::collections::{BTreeMap, HashMap};

use crate::data::loaders::{self, FileSource};
use crate::data::{chunk_rows, Element, Shard, Values};
use crate::wire::{ChunkMeta, DatasetId, ElemType};

/// One resident chunk.
#[derive(Debug)]
pub(crate) struct ResidentChunk {
    pub first_row: u64,
    pub values: Values,
    pub labels: Option<Values>,
}

/// The chunks of one dataset that a worker holds.
#[derive(Debug)]
pub(crate) struct ResidentDataset {
    pub elem: ElemType,
    pub cols: u32,
    pub total_chunks: u32,
    pub chunks: BTreeMap<u32, ResidentChunk>,
}

impl ResidentDataset {
    /// The shard of `chunk`, typed; errors if the chunk is not here or holds another element type.
    pub fn shard<T: Element>(&self, chunk: u32) -> Result<Shard<'_, T>, String> {
        let c = self.chunks.get(&chunk).ok_or_else(|| format!("chunk {chunk} is not resident on this worker"))?;
        let values = T::view(&c.values)
            .ok_or_else(|| format!("job maps over {} data but the dataset holds {}", T::TYPE, self.elem))?;
        let labels = match &c.labels {
            Some(l) => Some(T::view(l).ok_or("label type differs from value type")?),
            None => None,
        };
        Ok(Shard { values, cols: self.cols as usize, labels, first_row: c.first_row, chunk })
    }
}

fn slice_values(v: &Values, r: std::ops::Range<usize>) -> Values {
    match v {
        Values::F32(v) => Values::F32(v[r].to_vec()),
        Values::F64(v) => Values::F64(v[r].to_vec()),
    }
}

/// Everything resident on a worker.
#[derive(Debug, Default)]
pub(crate) struct Store {
    datasets: HashMap<DatasetId, ResidentDataset>,
}

impl Store {
    /// Stores one chunk whose payload is `rows*cols` values then optionally `rows` labels, little-endian.
    pub fn insert(&mut self, meta: &ChunkMeta, payload: &[u8]) -> Result<(), String> {
        let size = meta.elem.size();
        let n_values = meta.rows as usize * meta.cols as usize;
        let n_labels = if meta.has_labels { meta.rows as usize } else { 0 };
        if payload.len() != (n_values + n_labels) * size {
            return Err(format!(
                "chunk {} payload has {} bytes, expected {} ({} rows × {} cols{} of {})",
                meta.chunk,
                payload.len(),
                (n_values + n_labels) * size,
                meta.rows,
                meta.cols,
                if meta.has_labels { " + labels" } else { "" },
                meta.elem
            ));
        }
        let values = Values::from_le(meta.elem, &payload[..n_values * size]).map_err(|e| e.to_string())?;
        let labels = if meta.has_labels {
            Some(Values::from_le(meta.elem, &payload[n_values * size..]).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let ds = self.datasets.entry(meta.dataset).or_insert_with(|| ResidentDataset {
            elem: meta.elem,
            cols: meta.cols,
            total_chunks: meta.total_chunks,
            chunks: BTreeMap::new(),
        });
        if ds.elem != meta.elem || ds.cols != meta.cols || ds.total_chunks != meta.total_chunks {
            return Err("chunk metadata disagrees with earlier chunks of the same dataset".into());
        }
        ds.chunks.insert(meta.chunk, ResidentChunk { first_row: meta.first_row, values, labels });
        Ok(())
    }

    /// Loads chunks `[first, end)` of a file source from disk (the worker's own view of a shared filesystem).
    #[allow(clippy::too_many_arguments)]
    pub fn load_source(
        &mut self,
        dataset: DatasetId,
        source: &FileSource,
        elem: ElemType,
        fingerprint: [u8; 32],
        rows: u64,
        total_chunks: u32,
        chunks: std::ops::Range<u32>,
    ) -> Result<u32, String> {
        let info = loaders::describe(source).map_err(|e| e.to_string())?;
        if info.fingerprint != fingerprint || info.rows as u64 != rows {
            return Err(format!(
                "{} differs on this host from the file worker 0 described (size, time or shape); every worker must \
                 see the same files",
                source.values.display()
            ));
        }
        let row_range = |c: u32| chunk_rows(rows as usize, total_chunks as usize, c as usize);
        let all = row_range(chunks.start).start..row_range(chunks.end.max(chunks.start + 1) - 1).end;
        if chunks.is_empty() {
            return Ok(0);
        }
        let (values, labels) = match elem {
            ElemType::F32 => {
                let (v, l) = loaders::read_rows::<f32>(source, all.clone()).map_err(|e| e.to_string())?;
                (Values::F32(v), l.map(Values::F32))
            }
            ElemType::F64 => {
                let (v, l) = loaders::read_rows::<f64>(source, all.clone()).map_err(|e| e.to_string())?;
                (Values::F64(v), l.map(Values::F64))
            }
        };
        let cols = info.cols;
        let ds = self.datasets.entry(dataset).or_insert_with(|| ResidentDataset {
            elem,
            cols: cols as u32,
            total_chunks,
            chunks: BTreeMap::new(),
        });
        for c in chunks.clone() {
            let r = row_range(c);
            let local = (r.start - all.start)..(r.end - all.start);
            ds.chunks.insert(
                c,
                ResidentChunk {
                    first_row: r.start as u64,
                    values: slice_values(&values, local.start * cols..local.end * cols),
                    labels: labels.as_ref().map(|l| slice_values(l, local.clone())),
                },
            );
        }
        Ok(chunks.len() as u32)
    }

    /// The dataset, if resident.
    pub fn get(&self, id: &DatasetId) -> Option<&ResidentDataset> {
        self.datasets.get(id)
    }

    /// Forgets a dataset.
    pub fn remove(&mut self, id: &DatasetId) {
        self.datasets.remove(id);
    }
}
