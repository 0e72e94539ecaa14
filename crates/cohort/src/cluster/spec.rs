//! Parsing `--workers` specs — a comma-separated list of worker groups such as `local:4` or
//! `ssh://alice@node7:2222?slots=8` — and MPI/Horovod-style hostfiles.

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
    /// `ssh://[user@]host[:port][?slots=N]`: N processes on a remote host reached with the system's OpenSSH.
    Ssh {
        /// Where to connect.
        target: SshTarget,
        /// Number of worker processes on that host.
        slots: usize,
    },
}

/// A host reached over ssh: passed to `ssh` as is, so aliases from `~/.ssh/config` work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshTarget {
    /// Remote user (`ssh -l`); `None` lets ssh decide (config, then the local user name).
    pub user: Option<String>,
    /// Host name, alias or address.
    pub host: String,
    /// Port (`ssh -p`); `None` lets ssh decide.
    pub port: Option<u16>,
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl SshTarget {
    /// Parses `[user@]host[:port]` (IPv6 addresses in brackets: `[::1]:22`).
    pub fn parse(text: &str) -> Result<SshTarget, String> {
        let (user, rest) = match text.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err("empty user name before '@'".into()),
            None => (None, text),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(format!("unexpected {after:?} after the address")),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err("missing host name".into());
        }
        if host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c == '/' || c == '\'') {
            return Err(format!("{host:?} is not a valid host name"));
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("{p:?} is not a port number (1-65535)"))?,
            ),
            None => None,
        };
        Ok(SshTarget { user, host: host.to_string(), port })
    }
}

/// A parsed hostfile: the workers to start, and the spares kept in reserve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hostfile {
    /// Hosts to start workers on.
    pub workers: Vec<WorkerSpec>,
    /// Hosts (lines marked `spare`) that replace lost workers.
    pub spares: Vec<WorkerSpec>,
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
        if let Some(rest) = t.strip_prefix("ssh://") {
            let (addr, query) = match rest.split_once('?') {
                Some((a, q)) => (a, Some(q)),
                None => (rest, None),
            };
            let target = SshTarget::parse(addr.trim_end_matches('/')).map_err(bad)?;
            let mut slots = 1;
            for pair in query.into_iter().flat_map(|q| q.split('&')) {
                match pair.split_once('=') {
                    Some(("slots", n)) => slots = parse_slots(n).map_err(bad)?,
                    _ => return Err(bad(format!("unknown option {pair:?}; the only option is slots=N"))),
                }
            }
            return Ok(WorkerSpec::Ssh { target, slots });
        }
        Err(bad("unknown kind of worker; expected local:N or ssh://[user@]host[:port][?slots=N]".into()))
    }

    /// Parses a hostfile: one host per line in the MPI/Horovod style — `host`, `host slots=4`,
    /// `user@host:2222 slots=2` (also `host:4` as Horovod writes it) — with `#` comments and blank lines. A line
    /// with the word `spare` (`node9 slots=2 spare`) lists spare workers, started only to replace lost ones.
    pub fn parse_hostfile(text: &str, origin: &str) -> Result<Hostfile, Error> {
        let mut file = Hostfile::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| Error::Spec { spec: format!("{origin}:{}: {line}", i + 1), reason };
            let mut words = line.split_whitespace();
            let host = words.next().expect("line is not empty");
            let mut slots = None;
            let mut spare = false;
            for w in words {
                match w.split_once('=') {
                    Some(("slots" | "max_slots", n)) => slots = Some(parse_slots(n).map_err(bad)?),
                    None if w == "spare" => spare = true,
                    _ => return Err(bad(format!("unknown field {w:?}; expected `host slots=N [spare]`"))),
                }
            }
            let target = match SshTarget::parse(host) {
                // Horovod's `host:4` means four slots, not port 4, when no slots= field is given.
                Ok(t) if slots.is_none() && t.port.is_some_and(|p| p < 1024) && !host.contains('@') => {
                    slots = t.port.map(|p| p as usize);
                    SshTarget { port: None, ..t }
                }
                Ok(t) => t,
                Err(e) => return Err(bad(e)),
            };
            let spec = WorkerSpec::Ssh { target, slots: slots.unwrap_or(1) };
            if spare {
                file.spares.push(spec);
            } else {
                file.workers.push(spec);
            }
        }
        if file.workers.is_empty() && file.spares.is_empty() {
            return Err(Error::Spec { spec: origin.to_string(), reason: "the hostfile lists no hosts".into() });
        }
        Ok(file)
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
            WorkerSpec::Ssh { slots, .. } => *slots,
        }
    }
}

fn parse_slots(n: &str) -> Result<usize, String> {
    n.parse::<usize>()
        .ok()
        .filter(|&n| (1..=MAX_WORKERS_PER_SPEC).contains(&n))
        .ok_or_else(|| format!("slots={n} must be a number between 1 and {MAX_WORKERS_PER_SPEC}"))
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
            WorkerSpec::Ssh { target, slots } => write!(f, "ssh://{target}?slots={slots}"),
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
        let l = WorkerSpec::parse_list("local:1,ssh://bob@10.0.0.5:2222?slots=3,ssh://node7,ssh://[::1]:22").unwrap();
        assert_eq!(
            l[1],
            WorkerSpec::Ssh {
                target: SshTarget { user: Some("bob".into()), host: "10.0.0.5".into(), port: Some(2222) },
                slots: 3
            }
        );
        assert_eq!(
            l[2],
            WorkerSpec::Ssh { target: SshTarget { user: None, host: "node7".into(), port: None }, slots: 1 }
        );
        assert_eq!(l[3].to_string(), "ssh://[::1]:22?slots=1");
        assert_eq!(l.iter().map(WorkerSpec::slots).sum::<usize>(), 6);
    }

    #[test]
    fn hostfiles_parse_in_the_mpi_style() {
        let text = "# cluster\nnode1 slots=4\n\nalice@node2:2222 slots=2  # fast one\nnode3\nnode4:8\nnode9 spare\n";
        let file = WorkerSpec::parse_hostfile(text, "hosts").unwrap();
        assert_eq!(file.spares, vec![WorkerSpec::parse("ssh://node9").unwrap()]);
        let shown: Vec<String> = file.workers.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown,
            ["ssh://node1?slots=4", "ssh://alice@node2:2222?slots=2", "ssh://node3?slots=1", "ssh://node4?slots=8"]
        );
        let e = WorkerSpec::parse_hostfile("node1 slots=4\nnode2 cpus=3\n", "hosts").unwrap_err().to_string();
        assert!(e.contains("hosts:2") && e.contains("cpus=3"), "{e}");
        assert!(WorkerSpec::parse_hostfile("# nothing\n", "h").unwrap_err().to_string().contains("no hosts"));
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
            ("ssh://", "missing host"),
            ("ssh://h:0", "not a port"),
            ("ssh://h:99999", "not a port"),
            ("ssh://h?slots=0", "between 1 and"),
            ("ssh://h?cores=2", "unknown option"),
            ("ssh://@h", "empty user"),
            ("ssh://-oProxyCommand=x", "not a valid host"),
            ("ssh://[::1", "unclosed"),
            ("local:99999", "between 1 and"),
        ] {
            let e = WorkerSpec::parse_list(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec:?}: {e}");
        }
    }
}
