//! What a server measured: the staleness its reads had, the bytes each kind of request moved, how long each
//! worker's pulls waited for the consistency mode, and how fast it applied updates.
//!
//! All times come from the timestamps the runtime feeds with each request, so the numbers are reproducible in the
//! simulation. Bytes are *tensor* bytes (4 per value, 8 per key listed): frame headers are the runtime's to add.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Messages of one kind and the tensor bytes they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Messages.
    pub messages: u64,
    /// Tensor bytes (values and listed keys).
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.messages += 1;
        self.bytes += bytes;
    }
}

/// How long one worker's pulls waited for admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitStats {
    /// Pulls answered.
    pub pulls: u64,
    /// Of which had to wait (were deferred).
    pub deferred: u64,
    /// Total waiting time.
    pub total: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl WaitStats {
    pub(crate) fn add(&mut self, waited: Duration) {
        self.pulls += 1;
        if waited > Duration::ZERO {
            self.deferred += 1;
        }
        self.total += waited;
        self.max = self.max.max(waited);
    }
}

/// The server's measurements, kept in its snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Pushes received (duplicates and rejected ones included) and their bytes.
    pub push_in: Traffic,
    /// Pulls received and the bytes of their key lists.
    pub pull_in: Traffic,
    /// Clock declarations received.
    pub clock_in: Traffic,
    /// Pull replies sent and their values' bytes.
    pub pull_out: Traffic,
    /// Push acknowledgements sent.
    pub ack_out: Traffic,
    /// Re-sent pushes recognised and not applied again.
    pub duplicates: u64,
    /// Requests refused.
    pub rejected: u64,
    /// Staleness of answered reads (reader's clock minus the view clock) → number of reads.
    pub staleness: BTreeMap<u64, u64>,
    /// Per worker, how long its pulls waited.
    pub waits: Vec<WaitStats>,
    /// Rule steps taken: one per push applied, or one per clock under `ByClockSum`.
    pub steps: u64,
    /// Parameter values updated (a key updated twice counts twice).
    pub values_updated: u64,
    /// When the first update was applied.
    pub first_update: Option<Duration>,
    /// When the last update was applied.
    pub last_update: Option<Duration>,
    /// Barriers passed (ASP: clocks `W, 2W, ...` the view reached; BSP: every clock).
    pub barriers: u64,
}

impl Metrics {
    pub(crate) fn new(workers: u32) -> Metrics {
        Metrics { waits: vec![WaitStats::default(); workers as usize], ..Metrics::default() }
    }

    pub(crate) fn applied(&mut self, values: u64, now: Duration) {
        self.steps += 1;
        self.values_updated += values;
        self.first_update.get_or_insert(now);
        self.last_update = Some(now);
    }

    /// Reads answered.
    pub fn reads(&self) -> u64 {
        self.staleness.values().sum()
    }

    /// Mean staleness of the reads answered, if any.
    pub fn mean_staleness(&self) -> Option<f64> {
        let n = self.reads();
        (n > 0).then(|| self.staleness.iter().map(|(s, k)| *s as f64 * *k as f64).sum::<f64>() / n as f64)
    }

    /// Largest staleness of the reads answered, if any.
    pub fn max_staleness(&self) -> Option<u64> {
        self.staleness.keys().next_back().copied()
    }

    /// Rule steps per second between the first and the last update (`None` before two distinct instants).
    pub fn steps_per_sec(&self) -> Option<f64> {
        let span = self.last_update?.checked_sub(self.first_update?)?;
        (span > Duration::ZERO).then(|| self.steps as f64 / span.as_secs_f64())
    }

    /// Parameter values updated per second between the first and the last update.
    pub fn values_per_sec(&self) -> Option<f64> {
        let span = self.last_update?.checked_sub(self.first_update?)?;
        (span > Duration::ZERO).then(|| self.values_updated as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let mut m = Metrics::new(2);
        assert_eq!((m.mean_staleness(), m.max_staleness(), m.steps_per_sec()), (None, None, None));
        m.staleness.insert(0, 3);
        m.staleness.insert(2, 1);
        assert_eq!((m.reads(), m.mean_staleness(), m.max_staleness()), (4, Some(0.5), Some(2)));
        m.applied(10, Duration::from_secs(1));
        assert_eq!(m.steps_per_sec(), None, "one instant is no rate");
        m.applied(30, Duration::from_secs(3));
        assert_eq!((m.steps_per_sec(), m.values_per_sec()), (Some(1.0), Some(20.0)));
        m.waits[1].add(Duration::ZERO);
        m.waits[1].add(Duration::from_millis(5));
        assert_eq!(
            m.waits[1],
            WaitStats { pulls: 2, deferred: 1, total: Duration::from_millis(5), max: Duration::from_millis(5) }
        );
    }
}
