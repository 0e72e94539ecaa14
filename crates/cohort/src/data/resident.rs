//! Chunks resident on a worker, by dataset: loaded once (shipped by the master or read from shared files), reused by
//! every round until dropped, and moved chunk by chunk when the master changes the placement.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use crate::data::loaders::{self, FileSource};
use crate::data::{chunk_rows, Element, Shard, Values};
use crate::wire::{ChunkMeta, DatasetId, ElemType, WorkerFailure};

/// One resident chunk.
#[derive(Debug)]
pub(crate) struct ResidentChunk {
    pub first_row: u64,
    pub values: Values,
    pub labels: Option<Values>,
}

/// The chunks of one dataset that a worker holds. Chunks are shared: cloning a resident dataset is cheap (a
/// parameter-server run takes a copy for its thread while the process goes on serving the master).
#[derive(Debug, Clone)]
pub(crate) struct ResidentDataset {
    pub id: DatasetId,
    pub elem: ElemType,
    pub cols: u32,
    pub total_chunks: u32,
    pub chunks: BTreeMap<u32, std::sync::Arc<ResidentChunk>>,
}

/// The first bytes of a dataset id, as errors show it.
pub(crate) fn short_id(id: &DatasetId) -> String {
    hex::encode(&id[..8])
}

impl ResidentDataset {
    /// The shard of `chunk`, typed; fails if the chunk is not here or holds another element type.
    pub fn shard<T: Element>(&self, chunk: u32) -> Result<Shard<'_, T>, WorkerFailure> {
        let c = self
            .chunks
            .get(&chunk)
            .ok_or_else(|| WorkerFailure::MissingChunk { dataset: short_id(&self.id), chunk })?;
        let mismatch = || WorkerFailure::Decode {
            what: format!("chunk {chunk}"),
            detail: format!("the job reads {} data but the dataset holds {}", T::TYPE, self.elem),
        };
        let values = T::view(&c.values).ok_or_else(mismatch)?;
        let labels = match &c.labels {
            Some(l) => Some(T::view(l).ok_or_else(mismatch)?),
            None => None,
        };
        Ok(Shard { values, cols: self.cols as usize, labels, first_row: c.first_row, chunk })
    }

    /// Rows held in chunks `range` (missing chunks count as empty). Visits only the resident chunks, whatever
    /// range a request names.
    pub fn rows_in(&self, range: Range<u32>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        self.chunks.range(range).map(|(_, c)| c.values.len() as u64 / u64::from(self.cols.max(1))).sum()
    }
}

fn slice_values(v: &Values, r: Range<usize>) -> Values {
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
    fn dataset_mut(&mut self, id: DatasetId, elem: ElemType, cols: u32, total_chunks: u32) -> &mut ResidentDataset {
        self.datasets.entry(id).or_insert_with(|| ResidentDataset {
            id,
            elem,
            cols,
            total_chunks,
            chunks: BTreeMap::new(),
        })
    }

    /// Stores one chunk whose payload is `rows*cols` values then optionally `rows` labels, little-endian.
    pub fn insert(&mut self, meta: &ChunkMeta, payload: &[u8]) -> Result<(), WorkerFailure> {
        let bad = |detail: String| WorkerFailure::BadChunk { chunk: meta.chunk, detail };
        let size = meta.elem.size();
        // In u128: rows × cols × 8 of two u32 cannot overflow there, whatever a frame claims.
        let n_labels = if meta.has_labels { u128::from(meta.rows) } else { 0 };
        let expected = (u128::from(meta.rows) * u128::from(meta.cols) + n_labels) * size as u128;
        if payload.len() as u128 != expected {
            return Err(bad(format!(
                "payload has {} bytes, expected {expected} ({} rows × {} cols{} of {})",
                payload.len(),
                meta.rows,
                meta.cols,
                if meta.has_labels { " + labels" } else { "" },
                meta.elem
            )));
        }
        // The payload is as long as claimed, so these fit.
        let n_values = meta.rows as usize * meta.cols as usize;
        if meta.chunk >= meta.total_chunks {
            return Err(bad(format!("chunk index beyond the dataset's {} chunks", meta.total_chunks)));
        }
        if meta.total_chunks as usize > crate::data::MAX_CHUNKS {
            return Err(bad(format!(
                "the dataset claims {} chunks, more than the limit of {}",
                meta.total_chunks,
                crate::data::MAX_CHUNKS
            )));
        }
        let values = Values::from_le(meta.elem, &payload[..n_values * size]).map_err(|e| bad(e.to_string()))?;
        let labels = if meta.has_labels {
            Some(Values::from_le(meta.elem, &payload[n_values * size..]).map_err(|e| bad(e.to_string()))?)
        } else {
            None
        };
        let ds = self.dataset_mut(meta.dataset, meta.elem, meta.cols, meta.total_chunks);
        if ds.elem != meta.elem || ds.cols != meta.cols || ds.total_chunks != meta.total_chunks {
            return Err(bad("metadata disagrees with earlier chunks of the same dataset".into()));
        }
        ds.chunks.insert(meta.chunk, std::sync::Arc::new(ResidentChunk { first_row: meta.first_row, values, labels }));
        Ok(())
    }

    /// Loads chunk ranges of a file source from disk (the worker's own view of a shared filesystem). Returns the
    /// number of chunks of the dataset now resident.
    #[allow(clippy::too_many_arguments)]
    pub fn load_source(
        &mut self,
        dataset: DatasetId,
        source: &FileSource,
        elem: ElemType,
        fingerprint: [u8; 32],
        rows: u64,
        total_chunks: u32,
        ranges: &[Range<u32>],
    ) -> Result<u32, WorkerFailure> {
        let load = |detail: String| WorkerFailure::Load { detail };
        let info = loaders::describe(source).map_err(|e| load(e.to_string()))?;
        if info.fingerprint != fingerprint || info.rows as u64 != rows {
            return Err(load(format!(
                "{} differs on this host from the file the master described (size, time or shape); every worker \
                 must see the same files",
                source.values.display()
            )));
        }
        // As the master cuts it: at least one chunk, at most one per row and at most MAX_CHUNKS.
        if total_chunks == 0 || u64::from(total_chunks) > rows || total_chunks as usize > crate::data::MAX_CHUNKS {
            return Err(load(format!(
                "{} rows cannot be cut into {total_chunks} chunks (1 to one per row, at most {})",
                rows,
                crate::data::MAX_CHUNKS
            )));
        }
        if ranges.iter().any(|r| r.end > total_chunks || r.start > r.end) {
            return Err(load(format!("chunk ranges {ranges:?} do not fit {total_chunks} chunks")));
        }
        let cols = info.cols;
        let row_range = |c: u32| chunk_rows(rows as usize, total_chunks as usize, c as usize);
        for chunks in ranges.iter().filter(|r| !r.is_empty()) {
            let all = row_range(chunks.start).start..row_range(chunks.end - 1).end;
            let (values, labels) = match elem {
                ElemType::F32 => {
                    let (v, l) = loaders::read_rows::<f32>(source, all.clone()).map_err(|e| load(e.to_string()))?;
                    (Values::F32(v), l.map(Values::F32))
                }
                ElemType::F64 => {
                    let (v, l) = loaders::read_rows::<f64>(source, all.clone()).map_err(|e| load(e.to_string()))?;
                    (Values::F64(v), l.map(Values::F64))
                }
            };
            let ds = self.dataset_mut(dataset, elem, cols as u32, total_chunks);
            for c in chunks.clone() {
                let r = row_range(c);
                let local = (r.start - all.start)..(r.end - all.start);
                ds.chunks.insert(
                    c,
                    std::sync::Arc::new(ResidentChunk {
                        first_row: r.start as u64,
                        values: slice_values(&values, local.start * cols..local.end * cols),
                        labels: labels.as_ref().map(|l| slice_values(l, local.clone())),
                    }),
                );
            }
        }
        Ok(self.datasets.get(&dataset).map_or(0, |d| d.chunks.len() as u32))
    }

    /// The dataset, if resident.
    pub fn get(&self, id: &DatasetId) -> Option<&ResidentDataset> {
        self.datasets.get(id)
    }

    /// Forgets a dataset.
    pub fn remove(&mut self, id: &DatasetId) {
        self.datasets.remove(id);
    }

    /// Forgets some chunks of a dataset. Visits only the resident chunks, whatever ranges a request names.
    pub fn remove_chunks(&mut self, id: &DatasetId, ranges: &[Range<u32>]) {
        if let Some(ds) = self.datasets.get_mut(id) {
            for r in ranges.iter().filter(|r| !r.is_empty()) {
                let held: Vec<u32> = ds.chunks.range(r.clone()).map(|(&c, _)| c).collect();
                for c in held {
                    ds.chunks.remove(&c);
                }
            }
        }
    }

    /// Chunks of a dataset resident here.
    pub fn chunk_count(&self, id: &DatasetId) -> u32 {
        self.datasets.get(id).map_or(0, |d| d.chunks.len() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(chunk: u32, total_chunks: u32) -> ChunkMeta {
        ChunkMeta {
            dataset: [1; 32],
            elem: ElemType::F64,
            cols: 2,
            total_chunks,
            chunk,
            first_row: u64::from(chunk),
            rows: 1,
            has_labels: false,
        }
    }

    fn store_with_chunks(chunks: &[u32]) -> Store {
        let mut store = Store::default();
        for &c in chunks {
            store.insert(&chunk(c, 8), &[0u8; 16]).unwrap();
        }
        store
    }

    /// `(rows × cols + rows) × 8` overflowed for shapes near u32::MAX: a panic in debug builds, and in release
    /// builds a wrapped size that a short payload could match (found by the fuzzer).
    #[test]
    fn load_chunk_with_a_huge_shape_is_a_bad_chunk_not_an_overflow() {
        let mut store = Store::default();
        for (rows, cols, has_labels) in
            [(u32::MAX, u32::MAX, true), (u32::MAX, 1 << 30, false), (1 << 31, 1 << 31, true)]
        {
            let meta = ChunkMeta { rows, cols, has_labels, ..chunk(0, 8) };
            let e = store.insert(&meta, &[0u8; 16]).unwrap_err();
            assert!(matches!(&e, WorkerFailure::BadChunk { detail, .. } if detail.contains("expected")), "{e:?}");
        }
        let e = store.insert(&chunk(0, u32::MAX), &[0u8; 16]).unwrap_err();
        assert!(e.to_string().contains("more than the limit"), "{e}");
        assert_eq!(store.chunk_count(&[1; 32]), 0);
    }

    /// A LoadSource cutting 3 rows into u32::MAX - 1 chunks was accepted; the next Map's reduction tree then
    /// overflowed (found by the fuzzer).
    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn load_source_with_more_chunks_than_rows_or_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::write(&images, [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6]).unwrap();
        let source = FileSource::idx(&images, None);
        let info = loaders::describe(&source).unwrap();
        let mut store = Store::default();
        let mut load = |total_chunks: u32| {
            let chunks = [0..total_chunks.min(2)];
            store.load_source([2; 32], &source, ElemType::F32, info.fingerprint, 3, total_chunks, &chunks)
        };
        for total_chunks in [0, 4, u32::MAX - 1] {
            let e = load(total_chunks).unwrap_err();
            assert!(e.to_string().contains("cannot be cut into"), "{e}");
        }
        assert_eq!(load(3).unwrap(), 2);
    }

    /// A request naming chunks up to u32::MAX used to visit every index in the range: billions of map lookups, minutes
    /// of a worker that answers nothing (found by the fuzzer).
    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn huge_chunk_ranges_visit_only_resident_chunks() {
        let mut store = store_with_chunks(&[0, 2, 3, 5]);
        let ds = store.get(&[1; 32]).unwrap();
        assert_eq!(ds.rows_in(2..u32::MAX), 3);
        assert_eq!(ds.rows_in(0..u32::MAX), 4);
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 5..2;
        assert_eq!(ds.rows_in(reversed.clone()), 0);
        store.remove_chunks(&[1; 32], &[reversed, 3..u32::MAX, 0..0]);
        assert_eq!(store.chunk_count(&[1; 32]), 2);
        store.remove_chunks(&[1; 32], &[0..u32::MAX]);
        assert_eq!(store.chunk_count(&[1; 32]), 0);
    }
}
