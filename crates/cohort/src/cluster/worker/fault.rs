//! Fault injection for tests and `cohort bench faults`: a worker kills, stops or exits itself at a chosen point,
//! so recovery can be tested against real processes at exactly the moment that matters.
//!
//! `COHORT_FAULT=<when>:<chunk>:<action>[:<nth>]` in a worker's environment arms one fault:
//! - `when`: `load` (on receiving chunk `chunk`, shipped or read from files), `map` (on a map request covering it),
//!   `pass` (on a pass over it);
//! - `action`: `kill` (SIGKILL itself), `stop` (SIGSTOP itself: a frozen process, heartbeats included), `exit`
//!   (exit with status 3);
//! - `nth`: fire on the n-th such event in this process (default 1).
//!
//! `COHORT_FAULT_ONCE=<path>` makes the fault fire in at most one process: the one that creates `<path>` first
//! (the replacement that takes over the chunk does not die again). Local workers inherit both variables from the
//! master; the ssh launcher forwards them.

use std::ops::Range;

/// Environment variable arming a fault.
pub const FAULT_ENV: &str = crate::cluster::process::FORWARDED_ENV[0];
/// Environment variable naming the file that lets a fault fire once across processes.
pub const FAULT_ONCE_ENV: &str = crate::cluster::process::FORWARDED_ENV[1];

/// When a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Load,
    Map,
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultAction {
    Kill,
    Stop,
    Exit,
}

/// An armed fault.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    when: When,
    chunk: u32,
    action: FaultAction,
    nth: u32,
    seen: u32,
    once: Option<std::path::PathBuf>,
}

impl Fault {
    /// The fault armed in this process's environment, if any. A malformed spec is reported on stderr and ignored.
    pub fn from_env() -> Option<Fault> {
        let spec = std::env::var(FAULT_ENV).ok().filter(|s| !s.is_empty())?;
        match Fault::parse(&spec) {
            Ok(mut f) => {
                f.once = std::env::var_os(FAULT_ONCE_ENV).map(Into::into);
                Some(f)
            }
            Err(e) => {
                eprintln!("cohort worker: ignoring {FAULT_ENV}={spec:?}: {e}");
                None
            }
        }
    }

    fn parse(spec: &str) -> Result<Fault, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        if !(3..=4).contains(&parts.len()) {
            return Err("expected <load|map|pass>:<chunk>:<kill|stop|exit>[:<nth>]".into());
        }
        let when = match parts[0] {
            "load" => When::Load,
            "map" => When::Map,
            "pass" => When::Pass,
            w => return Err(format!("unknown point {w:?}; expected load, map or pass")),
        };
        let chunk = parts[1].parse().map_err(|_| format!("{:?} is not a chunk index", parts[1]))?;
        let action = match parts[2] {
            "kill" => FaultAction::Kill,
            "stop" => FaultAction::Stop,
            "exit" => FaultAction::Exit,
            a => return Err(format!("unknown action {a:?}; expected kill, stop or exit")),
        };
        let nth = match parts.get(3) {
            Some(n) => n.parse().ok().filter(|&n| n >= 1).ok_or_else(|| format!("{n:?} is not a count ≥ 1"))?,
            None => 1,
        };
        Ok(Fault { when, chunk, action, nth, seen: 0, once: None })
    }

    /// Fires if `when` is this fault's point and `chunks` holds its chunk (for the n-th time, and first across
    /// processes if `COHORT_FAULT_ONCE` is set).
    pub fn check(&mut self, when: When, chunks: &[Range<u32>]) {
        if when != self.when || !chunks.iter().any(|r| r.contains(&self.chunk)) {
            return;
        }
        self.seen += 1;
        if self.seen != self.nth {
            return;
        }
        if let Some(path) = &self.once {
            if std::fs::OpenOptions::new().write(true).create_new(true).open(path).is_err() {
                return; // another process fired it already
            }
        }
        eprintln!(
            "cohort worker (pid {}): injected fault {:?} at {:?} of chunk {}",
            std::process::id(),
            self.action,
            when,
            self.chunk
        );
        match self.action {
            // SAFETY: signals to this very process.
            FaultAction::Kill => unsafe {
                libc::raise(libc::SIGKILL);
            },
            FaultAction::Stop => unsafe {
                libc::raise(libc::SIGSTOP);
            },
            FaultAction::Exit => std::process::exit(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let f = Fault::parse("map:3:kill").unwrap();
        assert_eq!((f.when, f.chunk, f.action, f.nth), (When::Map, 3, FaultAction::Kill, 1));
        let f = Fault::parse("pass:0:stop:4").unwrap();
        assert_eq!((f.when, f.nth), (When::Pass, 4));
        assert!(Fault::parse("map:3").unwrap_err().contains("expected"));
        assert!(Fault::parse("boom:3:kill").unwrap_err().contains("unknown point"));
        assert!(Fault::parse("map:x:kill").unwrap_err().contains("not a chunk"));
        assert!(Fault::parse("map:1:explode").unwrap_err().contains("unknown action"));
        assert!(Fault::parse("map:1:kill:0").unwrap_err().contains("count"));
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn counts_only_matching_events() {
        let mut f = Fault::parse("map:5:exit:3").unwrap();
        f.check(When::Map, &[0..5]); // chunk 5 not covered
        f.check(When::Load, &[5..6]); // another point
        f.check(When::Map, &[5..6]);
        f.check(When::Map, &[0..9]);
        assert_eq!(f.seen, 2, "fires on the third matching event only");
    }
}
