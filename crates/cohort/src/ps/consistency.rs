//! Consistency modes: the vector clock a server keeps (one clock per worker) and when a pull may be answered.
//!
//! A worker at clock `c` has completed clocks `< c`. The server's *view* is the smallest clock among live workers:
//! every update of a clock `< view` has reached the server (a worker's pushes precede its clock declaration on its
//! connection). A pull at clock `c` is admitted when `view >= required_view(c)`:
//!
//! | mode | `required_view(c)` | a read at `c` sees every update of clocks |
//! | --- | --- | --- |
//! | `bsp` | `c` | `< c` |
//! | `ssp:S` (Ho et al. 2013) | `c - S` | `<= c - S - 1` |
//! | `asp:S,W` | `max(c - s_now, W * floor(c / W))` with `0 <= s_now <= S` adapted | `<= c - s_now - 1`, and `< W * floor(c / W)` |
//! | `async` | `0` | (none promised; the staleness is measured) |
//!
//! **ASP's adaptation.** The runtime feeds every request with its timestamp (data, not a clock read). The [`Gate`]
//! keeps per worker an exponentially weighted moving average (weight 0.3 on the newest sample) of the time one clock
//! takes the worker *when it is not kept waiting*: from the later of its previous clock advance and the answer to its
//! last pull, to its next clock advance (per clock advanced). Measuring the whole advance-to-advance period instead
//! would include the waits the bound itself imposes, and a fast worker held back would look as slow as the
//! straggler. With `r` the ratio of the slowest live worker's period to the fastest's, the bound is
//! `s_now = min(S, ceil(r - 1))` (with a 1e-6 tolerance): the extra clocks the fastest worker completes while the
//! slowest completes one, so the fastest need not wait within one iteration of the slowest. Equal speeds give
//! `s_now = 0` (BSP's fresh reads); a 3x straggler gives 2; `S` caps it. Until every live worker has an estimate
//! (its first clock after an answered pull, or its second clock advance), `s_now = S`.
//! **The weak barrier**: clocks `W, 2W, 3W, ...` are barriers — a read at or past barrier `B` waits until every
//! live worker has completed clock `B - 1` — so the slowest worker synchronises with everyone at least once every
//! `W` of its iterations whatever `s_now` is.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::protocol::WorkerIdx;

/// How stale a read may be. Parse it from `bsp`, `ssp:S`, `asp:S,W` or `async`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Bulk synchronous: a read at clock `c` sees every update of clocks `< c`.
    Bsp,
    /// Stale synchronous: a read at clock `c` sees every update of clocks `<= c - s - 1`.
    Ssp {
        /// The staleness bound.
        s: u32,
    },
    /// Adaptive synchronous: the bound adapts to the workers' measured speed gap, at most `s`, with a full
    /// barrier every `w` clocks (see the module docs).
    Asp {
        /// The largest staleness bound the adaptation may choose.
        s: u32,
        /// The weak threshold: clocks `w, 2w, ...` are barriers. At least 1.
        w: u32,
    },
    /// Asynchronous: reads are answered at once; the staleness they had is recorded.
    Async,
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::Bsp => f.write_str("bsp"),
            Consistency::Ssp { s } => write!(f, "ssp:{s}"),
            Consistency::Asp { s, w } => write!(f, "asp:{s},{w}"),
            Consistency::Async => f.write_str("async"),
        }
    }
}

/// A consistency text that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid consistency mode {text:?}: {reason}; expected bsp, ssp:S, asp:S,W (W >= 1) or async")]
pub struct ParseConsistencyError {
    /// The text given.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

impl FromStr for Consistency {
    type Err = ParseConsistencyError;

    fn from_str(text: &str) -> Result<Consistency, ParseConsistencyError> {
        let err = |reason: String| ParseConsistencyError { text: text.to_string(), reason };
        let number = |a: &str, what: &str| {
            a.trim().parse::<u32>().map_err(|_| err(format!("{what} {:?} is not a non-negative integer", a.trim())))
        };
        let lower = text.trim().to_ascii_lowercase();
        let (name, args) = match lower.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a)),
            None => (lower.as_str(), None),
        };
        match (name, args) {
            ("bsp", None) => Ok(Consistency::Bsp),
            ("async", None) => Ok(Consistency::Async),
            ("bsp" | "async", Some(_)) => Err(err(format!("{name} takes no parameter"))),
            ("ssp", Some(a)) => Ok(Consistency::Ssp { s: number(a, "S")? }),
            ("ssp", None) => Err(err("ssp needs its staleness bound S".into())),
            ("asp", Some(a)) => {
                let (s, w) = a.split_once(',').ok_or_else(|| err("asp needs S and W".into()))?;
                let (s, w) = (number(s, "S")?, number(w, "W")?);
                if w == 0 {
                    return Err(err("W must be at least 1".into()));
                }
                Ok(Consistency::Asp { s, w })
            }
            ("asp", None) => Err(err("asp needs S and W".into())),
            _ => Err(err(format!("unknown mode {name:?}"))),
        }
    }
}

/// A server's vector clock: per worker, the clocks it has completed, and whether it is live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockTable {
    completed: Vec<u64>,
    live: Vec<bool>,
}

impl ClockTable {
    /// `workers` live workers at clock 0.
    pub fn new(workers: u32) -> ClockTable {
        ClockTable { completed: vec![0; workers as usize], live: vec![true; workers as usize] }
    }

    /// Number of workers (live or not).
    pub fn workers(&self) -> u32 {
        self.completed.len() as u32
    }

    /// Clocks worker `w` has completed (`w` must be `< workers()`).
    pub fn completed(&self, w: WorkerIdx) -> u64 {
        self.completed[w as usize]
    }

    /// Whether worker `w` counts for consistency.
    pub fn is_live(&self, w: WorkerIdx) -> bool {
        self.live[w as usize]
    }

    /// The view clock: the smallest clock among live workers (the largest of all if none is live).
    pub fn view(&self) -> u64 {
        let live = self.completed.iter().zip(&self.live).filter(|(_, l)| **l).map(|(c, _)| *c);
        live.min().unwrap_or_else(|| self.completed.iter().copied().max().unwrap_or(0))
    }

    /// The largest clock among live workers.
    pub fn fastest(&self) -> u64 {
        self.completed.iter().zip(&self.live).filter(|(_, l)| **l).map(|(c, _)| *c).max().unwrap_or(0)
    }

    /// Raises worker `w`'s clock to `to` if it is below; returns the previous value.
    pub(crate) fn advance(&mut self, w: WorkerIdx, to: u64) -> u64 {
        let c = &mut self.completed[w as usize];
        let before = *c;
        *c = before.max(to);
        before
    }

    pub(crate) fn set_live(&mut self, w: WorkerIdx, live: bool) {
        self.live[w as usize] = live;
    }
}

/// Weight of the newest sample in ASP's per-worker period average.
const ASP_WEIGHT: f64 = 0.3;

/// ASP's measurements: when each worker last advanced and its average time per clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AspState {
    s_now: u32,
    last: Vec<Option<Duration>>,
    /// Seconds per clock, averaged.
    period: Vec<Option<f64>>,
}

/// Pull admission for one consistency mode, with ASP's adaptive bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    mode: Consistency,
    asp: Option<AspState>,
}

impl Gate {
    /// Admission for `mode` with `workers` workers.
    pub fn new(mode: Consistency, workers: u32) -> Gate {
        let asp = match mode {
            Consistency::Asp { s, .. } => {
                Some(AspState { s_now: s, last: vec![None; workers as usize], period: vec![None; workers as usize] })
            }
            _ => None,
        };
        Gate { mode, asp }
    }

    /// The mode.
    pub fn mode(&self) -> Consistency {
        self.mode
    }

    /// Whether its tables are sized for `workers` workers (a restored snapshot is checked with this).
    pub(crate) fn sized_for(&self, workers: u32) -> bool {
        self.asp.as_ref().is_none_or(|a| a.last.len() == workers as usize && a.period.len() == workers as usize)
    }

    /// The staleness bound now (`None` under `async`); ASP's adapted `s_now`, before its barrier.
    pub fn bound(&self) -> Option<u64> {
        match self.mode {
            Consistency::Bsp => Some(0),
            Consistency::Ssp { s } => Some(s as u64),
            Consistency::Asp { .. } => self.asp.as_ref().map(|a| a.s_now as u64),
            Consistency::Async => None,
        }
    }

    /// The view a read at `clock` needs before it may be answered.
    pub fn required_view(&self, clock: u64) -> u64 {
        match self.mode {
            Consistency::Bsp => clock,
            Consistency::Ssp { s } => clock.saturating_sub(s as u64),
            Consistency::Asp { s, w } => {
                let s_now = self.asp.as_ref().map_or(s, |a| a.s_now) as u64;
                let barrier = clock / w as u64 * w as u64;
                clock.saturating_sub(s_now).max(barrier)
            }
            Consistency::Async => 0,
        }
    }

    /// The staleness allowed to a read at `clock` (`None` under `async`): `clock - required_view(clock)`.
    pub fn allowed(&self, clock: u64) -> Option<u64> {
        match self.mode {
            Consistency::Async => None,
            _ => Some(clock - self.required_view(clock)),
        }
    }

    /// Whether a read at `clock` may be answered with the clocks in `table`.
    pub fn admits(&self, clock: u64, table: &ClockTable) -> bool {
        table.view() >= self.required_view(clock)
    }

    /// Records that worker `w` advanced from `from` to `to` completed clocks at `now` (ASP measures speeds).
    pub(crate) fn advanced(&mut self, w: WorkerIdx, from: u64, to: u64, now: Duration, table: &ClockTable) {
        let Some(asp) = &mut self.asp else { return };
        if to <= from {
            return;
        }
        let i = w as usize;
        if let Some(last) = asp.last[i] {
            let sample = now.saturating_sub(last).as_secs_f64() / (to - from) as f64;
            asp.period[i] = Some(match asp.period[i] {
                Some(p) => (1.0 - ASP_WEIGHT) * p + ASP_WEIGHT * sample,
                None => sample,
            });
        }
        asp.last[i] = Some(now);
        self.adapt(table);
    }

    /// Worker `w`'s pull was answered at `now`: the time until its next advance is time it computed.
    pub(crate) fn answered(&mut self, w: WorkerIdx, now: Duration) {
        if let Some(asp) = &mut self.asp {
            let last = &mut asp.last[w as usize];
            *last = Some(last.map_or(now, |l| l.max(now)));
        }
    }

    /// A worker joined or left: forget a rejoining worker's speed, recompute the bound over live workers.
    pub(crate) fn membership(&mut self, w: WorkerIdx, joined: bool, table: &ClockTable) {
        if let Some(asp) = &mut self.asp {
            if joined {
                asp.last[w as usize] = None;
                asp.period[w as usize] = None;
            }
        }
        self.adapt(table);
    }

    fn adapt(&mut self, table: &ClockTable) {
        let (Consistency::Asp { s, .. }, Some(asp)) = (self.mode, &mut self.asp) else { return };
        let mut periods = Vec::new();
        for (i, p) in asp.period.iter().enumerate() {
            if table.is_live(i as WorkerIdx) {
                match p {
                    Some(p) => periods.push(*p),
                    // Not every live worker measured yet: keep the bound.
                    None => return,
                }
            }
        }
        let (Some(slow), Some(fast)) =
            (periods.iter().copied().reduce(f64::max), periods.iter().copied().reduce(f64::min))
        else {
            return;
        };
        let gap = if fast > 0.0 {
            slow / fast - 1.0
        } else if slow > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        // Less a tolerance, so rounding in measured periods at a whole ratio (3.0000001) does not add a clock.
        asp.s_now = if gap >= s as f64 { s } else { ((gap - 1e-6).ceil().max(0.0) as u32).min(s) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for (text, mode) in [
            ("bsp", Consistency::Bsp),
            ("ssp:3", Consistency::Ssp { s: 3 }),
            ("asp:4,10", Consistency::Asp { s: 4, w: 10 }),
            ("async", Consistency::Async),
        ] {
            assert_eq!(text.parse::<Consistency>().unwrap(), mode);
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(" SSP: 2 ".parse::<Consistency>().unwrap(), Consistency::Ssp { s: 2 });
        assert_eq!("asp:0, 1".parse::<Consistency>().unwrap(), Consistency::Asp { s: 0, w: 1 });
    }

    #[test]
    fn bad_modes_say_why() {
        for (text, why) in [
            ("ssp", "needs its staleness bound"),
            ("ssp:-1", "S \"-1\" is not a non-negative integer"),
            ("ssp:x", "is not a non-negative integer"),
            ("asp:3", "asp needs S and W"),
            ("asp:3,0", "W must be at least 1"),
            ("asp", "asp needs S and W"),
            ("bsp:1", "bsp takes no parameter"),
            ("ssb", "unknown mode"),
            ("", "unknown mode"),
        ] {
            let e = text.parse::<Consistency>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("expected bsp, ssp:S"), "{text}: {e}");
        }
    }

    #[test]
    fn required_views_per_mode() {
        let at = |mode, c| Gate::new(mode, 2).required_view(c);
        assert_eq!(at(Consistency::Bsp, 5), 5);
        assert_eq!(at(Consistency::Ssp { s: 2 }, 5), 3);
        assert_eq!(at(Consistency::Ssp { s: 9 }, 5), 0);
        assert_eq!(at(Consistency::Async, 5), 0);
        // ASP before any measurement: s_now = S = 3, barriers at multiples of 4.
        let asp = Consistency::Asp { s: 3, w: 4 };
        assert_eq!([3, 4, 5, 6, 7, 8, 9].map(|c| at(asp, c)), [0, 4, 4, 4, 4, 8, 8]);
        assert_eq!(Gate::new(asp, 2).allowed(6), Some(2));
        assert_eq!(Gate::new(Consistency::Async, 2).allowed(6), None);
    }

    #[test]
    fn admission_follows_the_slowest_live_worker() {
        let gate = Gate::new(Consistency::Ssp { s: 1 }, 3);
        let mut t = ClockTable::new(3);
        t.advance(0, 4);
        t.advance(1, 3);
        t.advance(2, 2);
        assert_eq!(t.view(), 2);
        assert!(gate.admits(3, &t) && !gate.admits(4, &t));
        t.set_live(2, false);
        assert_eq!((t.view(), t.fastest()), (3, 4));
        assert!(gate.admits(4, &t));
        t.set_live(0, false);
        t.set_live(1, false);
        assert_eq!(t.view(), 4, "no live worker: the largest clock");
    }

    fn feed(gate: &mut Gate, table: &mut ClockTable, periods_ms: &[u64], clocks: u64) {
        // Each worker advances one clock per period; feed events in time order.
        let mut events: Vec<(u64, u32, u64)> = Vec::new();
        for (w, p) in periods_ms.iter().enumerate() {
            for c in 1..=clocks {
                events.push((c * p, w as u32, c));
            }
        }
        events.sort();
        for (at, w, c) in events {
            let from = table.advance(w, c);
            gate.advanced(w, from, c, Duration::from_millis(at), table);
        }
    }

    #[test]
    fn asp_bound_follows_the_speed_gap() {
        let asp = Consistency::Asp { s: 5, w: 100 };
        for (periods, expect) in [
            (vec![10, 10, 10], 0),
            (vec![10, 30, 10], 2),
            (vec![10, 15], 1),
            (vec![10, 1000], 5),
            (vec![0, 0], 0),
            (vec![0, 10], 5),
        ] {
            let mut gate = Gate::new(asp, periods.len() as u32);
            let mut t = ClockTable::new(periods.len() as u32);
            assert_eq!(gate.bound(), Some(5), "before measurements");
            feed(&mut gate, &mut t, &periods, 6);
            assert_eq!(gate.bound(), Some(expect), "{periods:?}");
        }
    }

    #[test]
    fn asp_bound_ignores_workers_that_left_and_forgets_a_rejoined_ones_speed() {
        let mut gate = Gate::new(Consistency::Asp { s: 5, w: 100 }, 2);
        let mut t = ClockTable::new(2);
        feed(&mut gate, &mut t, &[10, 40], 4);
        assert_eq!(gate.bound(), Some(3));
        t.set_live(1, false);
        gate.membership(1, false, &t);
        assert_eq!(gate.bound(), Some(0));
        t.set_live(1, true);
        gate.membership(1, true, &t);
        assert_eq!(gate.bound(), Some(0), "kept until the rejoined worker is measured again");
    }

    #[test]
    fn asp_measures_compute_time_not_the_waits_its_bound_imposes() {
        // Worker 0 computes 10 ms per clock but is held back until worker 1 (30 ms) is done: it advances every
        // 30 ms, yet is answered 20 ms after each advance.
        let mut gate = Gate::new(Consistency::Asp { s: 9, w: 100 }, 2);
        let mut t = ClockTable::new(2);
        for c in 1..=5u64 {
            let at = Duration::from_millis(30 * c);
            for w in [1, 0] {
                let from = t.advance(w, c);
                gate.advanced(w, from, c, at, &t);
            }
            gate.answered(0, at + Duration::from_millis(20));
            gate.answered(1, at);
        }
        assert_eq!(gate.bound(), Some(2));
    }

    #[test]
    fn asp_barriers_hold_whatever_the_bound() {
        let gate = Gate::new(Consistency::Asp { s: 10, w: 3 }, 1);
        for c in 0..20u64 {
            let need = gate.required_view(c);
            assert!(need >= c / 3 * 3 && need >= c.saturating_sub(10), "{c}: {need}");
        }
        assert_eq!(gate.required_view(9), 9, "a read at a barrier clock is a BSP read");
    }
}
