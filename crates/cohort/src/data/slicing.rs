//! Cutting rows into chunks and chunks into worker ranges.
//!
//! Both cuts are "as even as possible": sizes differ by at most one, and larger pieces never depend on anything
//! but the two counts involved.

use std::ops::Range;

/// A default chunk holds at least this many rows (so per-chunk kernels stay efficient).
pub const MIN_ROWS_PER_CHUNK: usize = 64;
/// Default chunk counts never exceed this.
pub const MAX_DEFAULT_CHUNKS: usize = 256;

/// The chunk count used when a dataset does not set one: `ceil(rows / 64)` clamped to `1..=256`.
///
/// It depends only on the number of rows, never on the number of workers.
pub fn default_chunk_count(rows: usize) -> usize {
    rows.div_ceil(MIN_ROWS_PER_CHUNK).clamp(1, MAX_DEFAULT_CHUNKS)
}

/// Rows of chunk `i` when `rows` rows are cut into `chunks` chunks.
pub fn chunk_rows(rows: usize, chunks: usize, i: usize) -> Range<usize> {
    even_split(rows, chunks, i)
}

/// Contiguous chunk ranges for `workers` workers, as even as possible. Workers beyond the chunk count get empty
/// ranges.
pub fn assign_chunks(chunks: usize, workers: usize) -> Vec<Range<usize>> {
    (0..workers).map(|w| even_split(chunks, workers, w)).collect()
}

fn even_split(total: usize, parts: usize, i: usize) -> Range<usize> {
    let start = (total as u128 * i as u128 / parts as u128) as usize;
    let end = (total as u128 * (i as u128 + 1) / parts as u128) as usize;
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_contiguous_and_even() {
        for total in [1usize, 5, 64, 1000] {
            for parts in [1usize, 2, 3, 7, 16, 64] {
                let ranges = assign_chunks(total, parts);
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges.last().unwrap().end, total);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{total}/{parts}: {sizes:?}");
            }
        }
    }

    #[test]
    fn default_chunking_ignores_workers_and_is_bounded() {
        assert_eq!(default_chunk_count(1), 1);
        assert_eq!(default_chunk_count(64), 1);
        assert_eq!(default_chunk_count(65), 2);
        assert_eq!(default_chunk_count(10_000_000), MAX_DEFAULT_CHUNKS);
    }
}
