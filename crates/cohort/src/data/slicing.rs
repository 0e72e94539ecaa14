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

/// The least work a chunk sized by [`chunk_count_by_cost`] carries: 4 million floating-point operations, about
/// 0.1 ms on one core.
///
/// Every chunk has a fixed cost besides its rows: mapping it sets up the kernels and allocates, fills and adds a
/// partial result (about 4 µs for the sparse autoencoder's 40 kB partial, measured in-process on the 2-core
/// development machine: 1 000 patches cost 1.00 ms in 64 chunks, 0.75 ms in 4), and a GEMM over a handful of rows
/// runs far below its peak. At this size the fixed part stays within a few per cent of the work, while a data set of
/// a few thousand rows of a small model still splits into enough chunks for a few workers.
pub const MIN_CHUNK_FLOPS: f64 = 4.0e6;

/// The chunk count for `rows` rows that cost `flops_per_row` floating-point operations each: as many chunks as keep
/// every chunk (even the smallest of the even split) at or above [`MIN_CHUNK_FLOPS`], but at least 1 and at most
/// `max_chunks`.
///
/// Like [`default_chunk_count`] it depends only on the data and the model, never on the number of workers, so results
/// stay bit-identical for any worker count. A NaN or negative cost counts as zero (one chunk).
pub fn chunk_count_by_cost(rows: usize, flops_per_row: f64, max_chunks: usize) -> usize {
    if flops_per_row.is_nan() || flops_per_row <= 0.0 {
        return 1;
    }
    // The fewest rows that carry the minimum work; `as` saturates a huge quotient.
    let min_rows = ((MIN_CHUNK_FLOPS / flops_per_row).ceil() as usize).max(1);
    (rows / min_rows).min(max_chunks).max(1)
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

    #[test]
    fn chunks_by_cost_keep_a_minimum_of_work_per_chunk() {
        // The sparse autoencoder 64-25-64: 19 200 operations per patch.
        assert_eq!(chunk_count_by_cost(1_000, 19_200.0, 64), 4);
        assert_eq!(chunk_count_by_cost(10_000, 19_200.0, 64), 47);
        assert_eq!(chunk_count_by_cost(100_000, 19_200.0, 64), 64);
        for rows in [1, 2, 100, 1_000, 10_000, 1_000_000] {
            let n = chunk_count_by_cost(rows, 19_200.0, 64);
            assert!((1..=64).contains(&n) && n <= rows);
            if n > 1 {
                let smallest = rows / n;
                assert!(smallest as f64 * 19_200.0 >= MIN_CHUNK_FLOPS, "{rows} rows in {n} chunks");
            }
        }
        assert_eq!(chunk_count_by_cost(10, 1e12, 64), 10);
        assert_eq!(chunk_count_by_cost(0, 1.0, 64), 1);
        assert_eq!(chunk_count_by_cost(1_000, f64::NAN, 64), 1);
        assert_eq!(chunk_count_by_cost(1_000, -5.0, 64), 1);
    }
}
