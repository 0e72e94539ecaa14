//! Placement arithmetic: how many placement units each worker should hold (evenly, or in proportion to its measured
//! speed), which units move to reach that with as little data moved as possible, and how a set of chunks becomes
//! the contiguous runs a request names. Pure functions; the scheduler applies them.

use std::collections::BTreeMap;
use std::ops::Range;

use super::WorkerId;

/// How chunks are spread over workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// The same number of chunks on every worker.
    Even,
    /// Chunks in proportion to each worker's measured speed (rows per second in earlier rounds of the same job),
    /// once every worker has been measured; even until then. A worker three times slower than the others ends up
    /// with about a third of their share. Results do not change: the reduction tree is over chunks.
    #[default]
    Weighted,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "even" => Ok(Placement::Even),
            "weighted" | "speed" => Ok(Placement::Weighted),
            other => Err(format!("unknown placement {other:?}; expected even or weighted")),
        }
    }
}

/// Splits `total` items over weights by the largest-remainder method: counts sum to `total`, each within one of its
/// exact share, ties broken by position. All-zero or empty weights split evenly.
pub(crate) fn apportion(total: usize, weights: &[f64]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sane: Vec<f64> = weights.iter().map(|&w| if w.is_finite() && w > 0.0 { w } else { 0.0 }).collect();
    let sum: f64 = sane.iter().sum();
    let sane = if sum > 0.0 { sane } else { vec![1.0; weights.len()] };
    let sum: f64 = sane.iter().sum();
    let exact: Vec<f64> = sane.iter().map(|w| total as f64 * w / sum).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = total - counts.iter().sum::<usize>().min(total);
    let mut order: Vec<usize> = (0..exact.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// The moves that bring an assignment of units to workers to the `target` count per worker, moving as few units as
/// possible: every worker keeps its lowest-indexed units up to its target; the surplus goes, in unit order, to the
/// workers below target, in worker order. Returns `(unit, from, to)`; units held by a worker missing from `target`
/// move too.
pub(crate) fn moves_to_target(
    owner: &[Option<WorkerId>],
    target: &BTreeMap<WorkerId, usize>,
) -> Vec<(usize, Option<WorkerId>, WorkerId)> {
    let mut kept: BTreeMap<WorkerId, usize> = BTreeMap::new();
    let mut pool = Vec::new();
    for (unit, o) in owner.iter().enumerate() {
        match o {
            Some(w) if target.contains_key(w) && kept.get(w).copied().unwrap_or(0) < target[w] => {
                *kept.entry(*w).or_default() += 1;
            }
            _ => pool.push((unit, *o)),
        }
    }
    let mut moves = Vec::new();
    let mut pool = pool.into_iter();
    for (&w, &want) in target {
        let have = kept.get(&w).copied().unwrap_or(0);
        for _ in have..want {
            match pool.next() {
                Some((unit, from)) => moves.push((unit, from, w)),
                None => return moves,
            }
        }
    }
    moves
}

/// The longest time any worker needs for its units, if each unit takes `cost[unit] / speed[worker]`.
pub(crate) fn makespan(owner: &[Option<WorkerId>], cost: &[f64], speed: &BTreeMap<WorkerId, f64>) -> f64 {
    let mut load: BTreeMap<WorkerId, f64> = BTreeMap::new();
    for (unit, o) in owner.iter().enumerate() {
        if let Some(w) = o {
            *load.entry(*w).or_default() += cost[unit];
        }
    }
    load.iter()
        .map(|(w, l)| l / speed.get(w).copied().filter(|s| *s > 0.0).unwrap_or(f64::MIN_POSITIVE))
        .fold(0.0, f64::max)
}

/// Ascending chunk indices as maximal contiguous runs.
pub(crate) fn runs(chunks: impl IntoIterator<Item = u32>) -> Vec<Range<u32>> {
    let mut out: Vec<Range<u32>> = Vec::new();
    for c in chunks {
        match out.last_mut() {
            Some(r) if r.end == c => r.end += 1,
            _ => out.push(c..c + 1),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact_and_proportional() {
        assert_eq!(apportion(10, &[1.0, 1.0]), [5, 5]);
        assert_eq!(apportion(64, &[3.0, 1.0]), [48, 16]);
        assert_eq!(apportion(7, &[1.0, 1.0, 1.0]), [3, 2, 2]);
        assert_eq!(apportion(5, &[0.0, 0.0]), [3, 2]);
        assert_eq!(apportion(5, &[f64::NAN, 1.0]), [0, 5]);
        for total in [0, 1, 13, 64, 255] {
            for w in [vec![1.0], vec![0.3, 2.0, 0.7], vec![5.0, 5.0, 5.0, 1e-9]] {
                let c = apportion(total, &w);
                assert_eq!(c.iter().sum::<usize>(), total);
                let sum: f64 = w.iter().sum();
                for (ci, wi) in c.iter().zip(&w) {
                    assert!((*ci as f64 - total as f64 * wi / sum).abs() < 1.0 + 1e-9, "{total} {w:?} {c:?}");
                }
            }
        }
    }

    #[test]
    fn moves_keep_what_fits_and_move_only_the_surplus() {
        // Worker 1 holds 3 of 4 units, worker 0 one; target 2/2 moves exactly one unit, the lowest surplus one.
        let owner = [Some(0), Some(1), Some(1), Some(1)];
        let target = BTreeMap::from([(0, 2), (1, 2)]);
        assert_eq!(moves_to_target(&owner, &target), vec![(3, Some(1), 0)]);
        // A lost worker (2) and parked units (None) are handed out.
        let owner = [Some(2), None, Some(0), Some(2)];
        let target = BTreeMap::from([(0, 2), (1, 2)]);
        let moves = moves_to_target(&owner, &target);
        assert_eq!(moves, vec![(0, Some(2), 0), (1, None, 1), (3, Some(2), 1)]);
        // Already at target: nothing moves.
        assert!(moves_to_target(&[Some(0), Some(1)], &BTreeMap::from([(0, 1), (1, 1)])).is_empty());
    }

    #[test]
    fn makespan_and_runs() {
        let speed = BTreeMap::from([(0, 1.0), (1, 3.0)]);
        assert_eq!(makespan(&[Some(0), Some(1), Some(1), Some(1)], &[1.0; 4], &speed), 1.0);
        assert_eq!(makespan(&[Some(0), Some(0), Some(1), Some(1)], &[1.0; 4], &speed), 2.0);
        assert_eq!(runs([0, 1, 2, 5, 6, 9]), vec![0..3, 5..7, 9..10]);
        assert!(runs([]).is_empty());
    }
}
