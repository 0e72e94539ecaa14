//! A real single-node Slurm cluster for tests: `scripts/single-node-slurm.sh` starts a private munged, slurmctld and
//! slurmd (everything under a temporary directory, free ports), and dropping the fixture stops them by pid.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why Slurm tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("Slurm tests need root (slurmd starts tasks as their user)".into());
    }
    for program in ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/srun"] {
        if !Path::new(program).exists() {
            return Some(format!("no {program} (apt-get install slurm-wlm munge)"));
        }
    }
    None
}

/// A running cluster. Stopped on drop.
pub struct Slurm {
    dir: tempfile::TempDir,
    /// Its slurm.conf, for `SLURM_CONF`.
    pub conf: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/single-node-slurm.sh")
}

impl Slurm {
    /// Starts the daemons and waits until the node is idle.
    pub fn start() -> Slurm {
        let dir = tempfile::tempdir().unwrap();
        let (ctld, slurmd) = (super::sshd::free_port(), super::sshd::free_port());
        let out = Command::new("bash")
            .arg(script())
            .args(["start", &dir.path().display().to_string(), &ctld.to_string(), &slurmd.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "single-node-slurm.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("slurm.conf");
        Slurm { dir, conf }
    }

    /// A command with `SLURM_CONF` pointing at this cluster.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Jobs still known to the controller (`squeue`), one per line.
    pub fn queue(&self) -> String {
        let out = self.command("squeue").args(["-h", "-o", "%i %T"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Steps running now, as `JOBID.STEPID`.
    pub fn steps(&self) -> Vec<String> {
        let out = self.command("squeue").args(["-h", "-s", "-o", "%i"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }

    /// The end of the daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["slurmctld.log", "slurmd.log"] {
            let text = std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {name}\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n")));
        }
        s
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).args(["stop", &self.dir.path().display().to_string()]).status();
    }
}
