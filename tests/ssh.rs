//! Remote workers through a real OpenSSH server on loopback and in network namespaces: bootstrap by copying the
//! binary, determinism against local workers, both data channels, every launch error, and clean-up.
//!
//! These tests need root and /usr/sbin/sshd (CI installs openssh-server); elsewhere each prints why it skips.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::sshd::{script, unavailable, Netns, Sshd};
use common::*;

macro_rules! require_sshd {
    () => {
        if let Some(reason) = unavailable() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

/// Runs `cohort train linear` on a small problem with the given worker flags; returns the model hash.
fn train(workers: &[&str], extra: &[String]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut args: Vec<String> =
        ["train", "linear", "--rows", "2000", "--features", "4", "--iterations", "10", "--report"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(report.display().to_string());
    args.extend(workers.iter().map(|s| s.to_string()));
    args.extend(extra.iter().cloned());
    let out = Command::new(cohort_bin()).args(&args).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    Ok(json["model_sha256"].as_str().unwrap().to_string())
}

#[test]
fn ssh_workers_give_the_same_model_as_local_ones_and_cache_the_binary() {
    require_sshd!();
    let sshd = Sshd::start();
    let local = train(&["--workers", "local:2"], &[]).unwrap();
    let spec = sshd.spec(2);
    assert_eq!(train(&["--workers", &spec], &sshd.ssh_args()).unwrap_or_else(|e| panic!("{e}\n{}", sshd.log())), local);

    // The binary is cached under its hash and not copied again.
    let cached = sshd.cached_binaries();
    let sha = hex::encode(cohort::wire::file_sha256(&cohort_bin()).unwrap());
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].ends_with(&sha));
    let before = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();

    // Mixed local and remote, and the TCP data channel, give the same model again.
    let spec1 = sshd.spec(1);
    let mixed = format!("local:1,{spec1}");
    assert_eq!(train(&["--workers", &mixed], &sshd.ssh_args()).unwrap(), local);
    let mut tcp = sshd.ssh_args();
    tcp.extend(["--data-channel".to_string(), "tcp".to_string()]);
    assert_eq!(train(&["--workers", &spec], &tcp).unwrap(), local);
    assert_eq!(std::fs::metadata(&cached[0]).unwrap().modified().unwrap(), before, "binary copied twice");
    assert!(sshd.worker_pids().is_empty(), "remote workers left running");
}

#[test]
fn hostfile_lists_remote_hosts() {
    require_sshd!();
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("# test cluster\nroot@127.0.0.1:{} slots=3\n", sshd.port)).unwrap();
    let local = train(&["--workers", "local:3"], &[]).unwrap();
    let remote = train(&["--hostfile", hostfile.to_str().unwrap()], &sshd.ssh_args()).unwrap();
    assert_eq!(remote, local);
}

#[test]
fn a_refused_connection_is_named_and_leaves_no_worker_running() {
    require_sshd!();
    let good = Sshd::start();
    let dead_port = common::sshd::free_port();
    let workers = format!("{},ssh://root@127.0.0.1:{dead_port}", good.spec(2));
    let err = train(&["--workers", &workers], &good.ssh_args()).unwrap_err();
    assert!(err.contains(&format!("127.0.0.1:{dead_port}")) && err.contains("connection refused"), "{err}");
    assert!(
        eventually(Duration::from_secs(5), || good.worker_pids().is_empty()),
        "a worker outlived the failed launch"
    );
}

#[test]
fn authentication_and_host_key_failures_say_what_to_do() {
    require_sshd!();
    let sshd = Sshd::start();
    let spec = sshd.spec(1);
    // A key the server does not know.
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(ok.success());
    let mut args = sshd.ssh_args();
    args[1] = format!("IdentityFile={}", key.display());
    let err = train(&["--workers", &spec], &args).unwrap_err();
    assert!(err.contains("authentication failed for root@127.0.0.1") && err.contains("IdentityFile"), "{err}");

    // An unknown host key with strict checking.
    let empty = other.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let mut args = sshd.ssh_args();
    args[3] = format!("UserKnownHostsFile={}", empty.display());
    let err = train(&["--workers", &spec], &args).unwrap_err();
    assert!(err.contains("host key") && err.contains("StrictHostKeyChecking=accept-new"), "{err}");

    // A host name that does not resolve.
    let err = train(&["--workers", "ssh://root@no-such-host.invalid"], &sshd.ssh_args()).unwrap_err();
    assert!(err.contains("unknown host no-such-host.invalid"), "{err}");
}

#[test]
fn bootstrap_errors_name_the_host_and_the_fix() {
    require_sshd!();
    let dir = tempfile::tempdir().unwrap();
    let spec_args = |sshd: &Sshd| sshd.ssh_args();

    // A binary for another architecture (an ELF header claiming aarch64).
    let sshd = Sshd::start();
    let fake = dir.path().join("cohort-aarch64");
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[18] = 0xb7;
    std::fs::write(&fake, elf).unwrap();
    let mut args = spec_args(&sshd);
    args.extend(["--worker-binary".into(), fake.display().to_string()]);
    let err = train(&["--workers", &sshd.spec(1)], &args).unwrap_err();
    assert!(err.contains("runs Linux x86_64") && err.contains("built for linux aarch64"), "{err}");
    assert!(err.contains("--worker-binary"), "{err}");

    // A worker that fails to start: its exit status and stderr come back.
    let broken = dir.path().join("broken-worker");
    script(&broken, "echo 'error while loading shared libraries: libfoo.so' >&2\nexit 7");
    let mut args = spec_args(&sshd);
    args.extend(["--worker-binary".into(), broken.display().to_string()]);
    let err = train(&["--workers", &sshd.spec(1)], &args).unwrap_err();
    assert!(err.contains("exited with status 7") && err.contains("libfoo.so"), "{err}");

    // An unwritable cache directory (its parent is a file).
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let sshd = Sshd::start_with(None, "127.0.0.1", common::sshd::free_port(), Some(blocker.join("cache")));
    let err = train(&["--workers", &sshd.spec(1)], &spec_args(&sshd)).unwrap_err();
    assert!(err.contains("cannot copy the worker binary to root@127.0.0.1") && err.contains("not writable"), "{err}");

    // A full disk (a 1 MiB tmpfs), where mounting is allowed.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let sshd = Sshd::start_with(None, "127.0.0.1", common::sshd::free_port(), Some(small.clone()));
        let err = train(&["--workers", &sshd.spec(1)], &spec_args(&sshd)).unwrap_err();
        let _ = Command::new("umount").arg(&small).status();
        assert!(err.contains("remote disk is full"), "{err}");
    } else {
        eprintln!("skipping the full-disk case: cannot mount a tmpfs here");
    }
}

#[test]
fn interrupting_the_master_stops_remote_workers() {
    require_sshd!();
    let sshd = Sshd::start();
    let mut args: Vec<String> =
        ["train", "linear", "--rows", "2000", "--features", "4", "--iterations", "100000000", "--workers"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(sshd.spec(2));
    args.extend(sshd.ssh_args());
    let mut master =
        Command::new(cohort_bin()).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    assert!(
        eventually(Duration::from_secs(60), || sshd.worker_pids().len() == 2),
        "remote workers did not start: {}",
        sshd.log()
    );
    let ssh_clients = children(master.id());
    // SAFETY: signalling a child we started, as Ctrl-C would.
    unsafe { libc::kill(master.id() as i32, libc::SIGINT) };
    master.wait().unwrap();
    assert!(eventually(Duration::from_secs(20), || sshd.worker_pids().is_empty()), "remote workers survived");
    assert!(
        eventually(Duration::from_secs(20), || ssh_clients.iter().all(|&p| !alive(p))),
        "ssh clients survived the master"
    );
}

#[test]
fn two_hosts_in_network_namespaces_and_a_cut_link() {
    require_sshd!();
    let (a, b) = match (Netns::create(41), Netns::create(42)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            eprintln!("skipping: cannot create network namespaces: {:?} {:?}", a.err(), b.err());
            return;
        }
    };
    let sa = Sshd::start_with(Some(&a.name), &a.host_ip, 22, None);
    let sb = Sshd::start_with(Some(&b.name), &b.host_ip, 22, None);
    // One client config that trusts both servers.
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    let kh = |s: &Sshd| std::fs::read_to_string(s.dir.path().join("known_hosts")).unwrap();
    std::fs::write(&known, kh(&sa) + &kh(&sb)).unwrap();
    // Both servers accept the client key of `sa`.
    std::fs::copy(sa.dir.path().join("authorized_keys"), sb.dir.path().join("authorized_keys")).unwrap();
    let mut args = sa.ssh_args();
    args[3] = format!("UserKnownHostsFile={}", known.display());
    args.extend(["--connect-timeout".into(), "3".into()]);

    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("root@{}:22 slots=2\nroot@{}:22 slots=1\n", a.host_ip, b.host_ip)).unwrap();
    let local = train(&["--workers", "local:3"], &[]).unwrap();
    let remote = train(&["--hostfile", hostfile.to_str().unwrap()], &args)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", sa.log(), sb.log()));
    assert_eq!(remote, local);

    // Cut host b's link: the launch fails within the connect timeout, naming host b; host a is cleaned up.
    b.link(false);
    let started = std::time::Instant::now();
    let err = train(&["--hostfile", hostfile.to_str().unwrap()], &args).unwrap_err();
    let took = started.elapsed();
    b.link(true);
    assert!(
        err.contains(&b.host_ip) && (err.contains("could not reach") || err.contains("no ssh connection")),
        "{err}"
    );
    eprintln!("cut link reported after {took:?}: {}", err.lines().last().unwrap_or(""));
    assert!(eventually(Duration::from_secs(10), || sa.worker_pids().is_empty()), "host a kept workers");
}

#[test]
fn a_link_cut_mid_job_is_detected_and_the_job_recovers_on_the_other_host() {
    require_sshd!();
    let Ok(ns) = Netns::create(43) else {
        eprintln!("skipping: cannot create a network namespace");
        return;
    };
    let sshd = Sshd::start_with(Some(&ns.name), &ns.host_ip, 22, None);
    let mut builder = cohort::Cluster::builder()
        .workers(cohort::WorkerSpec::parse_list(&format!("local:1,{}", sshd.spec(1))).unwrap())
        .worker_program(cohort_bin())
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_secs(2));
    for (k, v) in sshd.options() {
        builder = builder.ssh_option(k, v);
    }
    let mut cluster = builder.start().unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    let data = cohort::Dataset::from_rows(&[[1.0], [2.0], [3.0], [4.0]]).unwrap().with_chunks(4).unwrap();
    let h = cluster.load(&data).unwrap();
    assert_eq!(cluster.run(&cohort_cli::jobs::diag::Sum, &(), &h).unwrap(), 10.0);
    ns.link(false);
    let cut = cluster.epoch().elapsed();
    // The remote worker goes silent; its chunks move to the local worker and the round completes, unchanged.
    assert_eq!(cluster.run(&cohort_cli::jobs::diag::Sum, &(), &h).unwrap(), 10.0);
    let failures = cluster.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].worker.contains(&ns.host_ip) && failures[0].cause.contains("stalled"), "{failures:?}");
    let detection = failures[0].detected - cut;
    eprintln!("cut link detected after {detection:?}");
    assert!(detection >= Duration::from_secs(2) - Duration::from_millis(150), "declared lost too early: {detection:?}");
    assert_eq!(cluster.num_workers(), 1);
    // Shutting down with a dead link is bounded too.
    let t = std::time::Instant::now();
    drop(cluster);
    eprintln!("shutdown with a cut link took {:?}", t.elapsed());
    ns.link(true);
    // The remote worker never saw its session end through the dead link; remove it so nothing outlives the test.
    for pid in sshd.worker_pids() {
        // SAFETY: killing a worker process this test started (inside its own network namespace).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(eventually(Duration::from_secs(5), || sshd.worker_pids().is_empty()), "remote workers survived");
}

/// Runs `cohort train ps` (linear, 2 workers, 2 servers, 40 clocks each) under `mode` with the given worker and
/// server flags; checks every worker did its clocks and the loss is small; returns the model hash.
fn train_ps(mode: &str, workers: &str, servers: &str, extra: &[String]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut args: Vec<String> = [
        "train",
        "ps",
        "--model",
        "linear",
        "--train-rows",
        "3000",
        "--clocks",
        "40",
        "--consistency",
        mode,
        "--workers",
        workers,
        "--servers",
        servers,
        "--report",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(report.display().to_string());
    args.extend(extra.iter().cloned());
    let out = Command::new(cohort_bin()).args(&args).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(json["workers"].as_array().unwrap().iter().all(|w| w["clocks"] == 40), "{json}");
    // Zero weights start at a loss of about 1.5 on this data; 80 SGD steps bring it well below 0.1.
    assert!(json["final_loss"].as_f64().unwrap() < 0.1, "{mode}: {json}");
    Ok(json["model_sha256"].as_str().unwrap().to_string())
}

#[test]
fn parameter_servers_and_workers_over_ssh_train_in_every_mode_and_bsp_like_local_ones() {
    require_sshd!();
    let sshd = Sshd::start();
    let local = train_ps("bsp", "local:2", "2", &[]).unwrap();
    let one = sshd.spec(1);
    // Remote servers with local workers, then remote workers with a local and a remote server.
    let remote_servers = train_ps("bsp", "local:2", &sshd.spec(2), &sshd.ssh_args());
    assert_eq!(remote_servers.unwrap_or_else(|e| panic!("{e}\n{}", sshd.log())), local);
    let (mixed_workers, mixed_servers) = (format!("local:1,{one}"), format!("local:1,{one}"));
    let mixed = train_ps("bsp", &mixed_workers, &mixed_servers, &sshd.ssh_args());
    assert_eq!(mixed.unwrap_or_else(|e| panic!("{e}\n{}", sshd.log())), local);
    // The other modes over the same mixed placement train too (their models depend on timing).
    for mode in ["ssp:2", "asp:2,8", "async"] {
        if let Err(e) = train_ps(mode, &mixed_workers, &mixed_servers, &sshd.ssh_args()) {
            panic!("{mode}: {e}\n{}", sshd.log());
        }
    }
    let gone = || sshd.worker_pids().is_empty();
    assert!(eventually(Duration::from_secs(5), gone), "remote workers or servers left running");
}
