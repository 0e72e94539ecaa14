//! A real OpenSSH server for tests: generated host and client keys, a private config, a free port on loopback (or
//! an address inside a network namespace), and a per-server cache directory for cohort's worker binaries.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why ssh tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new("/usr/sbin/sshd").exists() {
        return Some("no /usr/sbin/sshd (apt-get install openssh-server)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("sshd tests need root (they log in as root on a private sshd)".into());
    }
    None
}

/// A running sshd. Killed on drop.
pub struct Sshd {
    child: Child,
    /// Address it listens on.
    pub addr: String,
    /// Port it listens on.
    pub port: u16,
    /// Scratch directory holding keys, config and the cache.
    pub dir: tempfile::TempDir,
    /// `XDG_CACHE_HOME` of sessions on this server.
    pub cache: PathBuf,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sshd {
    /// Starts sshd on 127.0.0.1 with a fresh port.
    pub fn start() -> Sshd {
        Self::start_with(None, "127.0.0.1", free_port(), None)
    }

    /// Starts sshd, optionally inside network namespace `netns`, listening on `addr:port`. `cache` overrides the
    /// sessions' `XDG_CACHE_HOME`.
    pub fn start_with(netns: Option<&str>, addr: &str, port: u16, cache: Option<PathBuf>) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let mut host_pub = host_pub.split_whitespace();
        let (kind, key) = (host_pub.next().unwrap(), host_pub.next().unwrap());
        // ssh writes the default port without brackets.
        let name = if port == 22 { addr.to_string() } else { format!("[{addr}]:{port}") };
        std::fs::write(d.join("known_hosts"), format!("{name} {kind} {key}\n")).unwrap();
        let cache = cache.unwrap_or_else(|| d.join("cache"));
        let config = format!(
            "Port {port}\nListenAddress {addr}\nHostKey {hk}\nPidFile none\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nAuthorizedKeysFile {ak}\nStrictModes no\n\
             PermitRootLogin yes\nMaxSessions 100\nMaxStartups 100:30:200\nSetEnv XDG_CACHE_HOME={cache}\n\
             LogLevel ERROR\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
            cache = cache.display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/sbin/sshd"]);
                c
            }
            None => Command::new("/usr/sbin/sshd"),
        };
        let child = cmd
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut sshd = Sshd { child, addr: addr.to_string(), port, dir, cache };
        sshd.wait_listening();
        sshd
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let target = format!("{}:{}", self.addr, self.port);
        while TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sshd exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "sshd did not listen on {target}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What sshd wrote to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `ssh://root@ADDR:PORT?slots=N`.
    pub fn spec(&self, slots: usize) -> String {
        format!("ssh://root@{}:{}?slots={slots}", self.addr, self.port)
    }

    /// The `--ssh-option` flags that make the client trust this server and use the authorized key.
    pub fn ssh_args(&self) -> Vec<String> {
        let d = self.dir.path();
        [
            format!("IdentityFile={}", d.join("client_key").display()),
            format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "IdentitiesOnly=yes".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["--ssh-option".to_string(), o])
        .collect()
    }

    /// The same options as `(key, value)` pairs for `ClusterBuilder::ssh_option`.
    pub fn options(&self) -> Vec<(String, String)> {
        self.ssh_args()
            .chunks(2)
            .map(|p| {
                let (k, v) = p[1].split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// Binaries cached on this server.
    pub fn cached_binaries(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.cache.join("cohort/bin")) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Pids of processes running a binary from this server's cache (the remote workers).
    pub fn worker_pids(&self) -> Vec<u32> {
        let prefix = self.cache.join("cohort/bin");
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
                if exe.starts_with(&prefix) && super::alive(pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace with a veth link to the root namespace: `host_ip` inside, `peer_ip` outside. Removed on
/// drop.
pub struct Netns {
    /// Namespace name.
    pub name: String,
    /// Root-side interface name.
    pub veth: String,
    /// Address inside the namespace.
    pub host_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Creates namespace `cohort-t<id>-<pid>` on the private link 10.213.<id>.0/30.
    pub fn create(id: u8) -> Result<Netns, String> {
        let name = format!("cohort-t{id}-{}", std::process::id());
        let veth = format!("cht{id}x{}", std::process::id() % 100_000);
        let peer = format!("{veth}p");
        let (outside, inside) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
        ip(&["netns", "add", &name])?;
        let ns = Netns { name: name.clone(), veth: veth.clone(), host_ip: inside.clone() };
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &name])?;
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{inside}/30"), "dev", &peer])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &peer, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Brings the root-side end of the link down or up.
    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    drop(f);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
