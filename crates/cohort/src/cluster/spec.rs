//! Parsing `--workers` specs: a comma-separated list of worker groups such as `local:4`.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Most workers one spec entry may ask for.
pub const MAX_WORKERS_PER_SPEC: usize = 1024;

/// One group of workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSpec {
    /// `local:N`: N processes of this executable on this machine.
    Local {
        /// Number of processes.
        count: usize,
    },
}

impl WorkerSpec {
    /// Parses one entry, e.g. `local:4`.
    pub fn parse(text: &str) -> Result<WorkerSpec, Error> {
        let t = text.trim();
        let bad = |reason: String| Error::Spec { spec: text.to_string(), reason };
        if t.is_empty() {
            return Err(bad("empty worker spec; expected e.g. local:2".into()));
        }
        if let Some(n) = t.strip_prefix("local:") {
            let count: usize =
                n.parse().map_err(|_| bad(format!("{n:?} is not a number of workers; expected local:N with N ≥ 1")))?;
            if count == 0 || count > MAX_WORKERS_PER_SPEC {
                return Err(bad(format!("local worker count must be between 1 and {MAX_WORKERS_PER_SPEC}")));
            }
            return Ok(WorkerSpec::Local { count });
        }
        if t == "local" {
            return Err(bad("say how many local workers, e.g. local:4".into()));
        }
        Err(bad("unknown kind of worker; expected local:N".into()))
    }

    /// Parses a comma-separated list, e.g. `local:2,local:1`.
    pub fn parse_list(text: &str) -> Result<Vec<WorkerSpec>, Error> {
        let specs = text.split(',').map(WorkerSpec::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(specs)
    }

    /// Number of worker processes this entry starts.
    pub fn slots(&self) -> usize {
        match self {
            WorkerSpec::Local { count } => *count,
        }
    }
}

impl FromStr for WorkerSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        WorkerSpec::parse(s)
    }
}

impl fmt::Display for WorkerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerSpec::Local { count } => write!(f, "local:{count}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_specs_parse() {
        assert_eq!(WorkerSpec::parse_list("local:3").unwrap(), vec![WorkerSpec::Local { count: 3 }]);
        let l = WorkerSpec::parse_list("local:1, local:2").unwrap();
        assert_eq!(l.iter().map(WorkerSpec::slots).sum::<usize>(), 3);
        assert_eq!(l[1].to_string(), "local:2");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("local:0", "between 1 and"),
            ("local:x", "not a number"),
            ("local", "how many"),
            ("", "empty"),
            ("local:2,", "empty"),
            ("mars:3", "unknown kind"),
            ("local:99999", "between 1 and"),
        ] {
            let e = WorkerSpec::parse_list(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec:?}: {e}");
        }
    }
}
