//! The fixed reduction tree over chunk indices that makes results independent of the number of workers.
//!
//! The chunk count `C` is padded to a power of two `P`; node 1 is the root, node `n` has children `2n` and `2n+1`,
//! and leaf `P + i` is chunk `i` (the implicit layout of a segment tree). A node's value is `reduce(left, right)`,
//! where a child that covers only padding is absent and the other child's value passes up unchanged.
//!
//! A worker holding chunks `[a, b)` evaluates the maximal aligned nodes inside that range ([`Tree::cover`]) and
//! returns them; the master finishes the same recursion from the root ([`Tree::finish`]). Because every node's value
//! is the same function of the same leaves no matter who computed it, the final value is bit-identical for any
//! partition of the chunks among workers — and after a failed worker's chunks move elsewhere.

use std::collections::BTreeMap;
use std::ops::Range;

/// The reduction tree for a given chunk count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree {
    chunks: u32,
    leaves: u32,
}

impl Tree {
    /// The tree over `chunks` chunks (`chunks >= 1`).
    pub fn new(chunks: u32) -> Tree {
        assert!(chunks >= 1, "a reduction tree needs at least one chunk");
        Tree { chunks, leaves: chunks.next_power_of_two() }
    }

    /// Number of real chunks.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// The root node.
    pub fn root(&self) -> u32 {
        1
    }

    /// Node of chunk `i`.
    pub fn leaf(&self, chunk: u32) -> u32 {
        self.leaves + chunk
    }

    /// Chunks under `node`, clipped to the real chunks (may be empty for padding-only nodes).
    pub fn span(&self, node: u32) -> Range<u32> {
        let depth_below = self.leaves.trailing_zeros() - (31 - node.leading_zeros());
        let start = (node << depth_below) - self.leaves;
        let end = start + (1 << depth_below);
        start.min(self.chunks)..end.min(self.chunks)
    }

    /// The maximal aligned nodes whose chunks all lie inside `range`, left to right.
    pub fn cover(&self, range: Range<u32>) -> Vec<u32> {
        let (mut lo, mut hi) = (range.start + self.leaves, range.end + self.leaves);
        let (mut left, mut right) = (vec![], vec![]);
        while lo < hi {
            if lo & 1 == 1 {
                left.push(lo);
                lo += 1;
            }
            if hi & 1 == 1 {
                hi -= 1;
                right.push(hi);
            }
            lo >>= 1;
            hi >>= 1;
        }
        left.extend(right.into_iter().rev());
        left
    }

    /// Evaluates `node` from its leaves: `leaf(chunk)` for each chunk, `combine(left, right)` for each inner node,
    /// left before right. Returns `None` for padding-only nodes. Errors from `leaf` stop the evaluation.
    pub fn eval<T, E>(
        &self,
        node: u32,
        leaf: &mut impl FnMut(u32) -> Result<T, E>,
        combine: &mut impl FnMut(T, T) -> T,
    ) -> Result<Option<T>, E> {
        let span = self.span(node);
        if span.is_empty() {
            return Ok(None);
        }
        if node >= self.leaves {
            return leaf(span.start).map(Some);
        }
        let l = self.eval(2 * node, leaf, combine)?;
        let r = self.eval(2 * node + 1, leaf, combine)?;
        Ok(join(l, r, combine))
    }

    /// Finishes the reduction on the master from partial node values. Fails with the first uncovered chunk if the
    /// partials do not cover every chunk.
    pub fn finish<T>(&self, parts: &mut BTreeMap<u32, T>, combine: &mut impl FnMut(T, T) -> T) -> Result<T, u32> {
        self.finish_node(self.root(), parts, combine)?.ok_or(0)
    }

    fn finish_node<T>(
        &self,
        node: u32,
        parts: &mut BTreeMap<u32, T>,
        combine: &mut impl FnMut(T, T) -> T,
    ) -> Result<Option<T>, u32> {
        if let Some(v) = parts.remove(&node) {
            return Ok(Some(v));
        }
        let span = self.span(node);
        if span.is_empty() {
            return Ok(None);
        }
        if node >= self.leaves {
            return Err(span.start);
        }
        let l = self.finish_node(2 * node, parts, combine)?;
        let r = self.finish_node(2 * node + 1, parts, combine)?;
        Ok(join(l, r, combine))
    }
}

fn join<T>(l: Option<T>, r: Option<T>, combine: &mut impl FnMut(T, T) -> T) -> Option<T> {
    match (l, r) {
        (Some(l), Some(r)) => Some(combine(l, r)),
        (l, r) => l.or(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::assign_chunks;

    /// A non-associative combine that records the exact bracketing.
    fn bracket(l: String, r: String) -> String {
        format!("({l}{r})")
    }

    fn reduce_with_workers(chunks: u32, workers: usize) -> String {
        let tree = Tree::new(chunks);
        let mut parts = BTreeMap::new();
        for range in assign_chunks(chunks as usize, workers) {
            let range = range.start as u32..range.end as u32;
            for node in tree.cover(range.clone()) {
                let span = tree.span(node);
                assert!(span.start >= range.start && span.end <= range.end);
                let v = tree
                    .eval::<_, ()>(node, &mut |c| Ok(c.to_string()), &mut bracket)
                    .unwrap()
                    .expect("cover yields real nodes");
                parts.insert(node, v);
            }
        }
        tree.finish(&mut parts, &mut bracket).unwrap()
    }

    #[test]
    fn bracketing_is_identical_for_any_worker_count() {
        for chunks in [1u32, 2, 3, 5, 8, 13, 64, 100] {
            let one = reduce_with_workers(chunks, 1);
            for workers in [2, 3, 7, 16, 200] {
                assert_eq!(reduce_with_workers(chunks, workers), one, "chunks={chunks} workers={workers}");
            }
        }
        assert_eq!(reduce_with_workers(5, 1), "(((01)(23))4)");
    }

    #[test]
    fn cover_is_exact_and_spans_are_clipped() {
        let t = Tree::new(6);
        assert_eq!(t.span(1), 0..6);
        assert_eq!(t.span(3), 4..6);
        assert_eq!(t.span(7), 6..6);
        for a in 0..6 {
            for b in a..=6 {
                let mut covered = vec![];
                for n in t.cover(a..b) {
                    covered.extend(t.span(n));
                }
                assert_eq!(covered, (a..b).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn missing_chunk_is_reported() {
        let t = Tree::new(4);
        let mut parts = BTreeMap::from([(t.leaf(0), 1), (t.leaf(1), 1), (t.leaf(3), 1)]);
        assert_eq!(t.finish(&mut parts, &mut |a, b| a + b), Err(2));
    }
}
