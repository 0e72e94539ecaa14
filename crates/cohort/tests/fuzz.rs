//! A short, bounded fuzz run of every target (the long runs are `examples/fuzz.rs`): no input may panic, hang or
//! make a single allocation above 64 MiB. `COHORT_FUZZ_INPUTS` sets the inputs per target (default 5 000).

use cohort::fuzz::{self, Config, GuardAlloc, Target};

#[global_allocator]
static ALLOC: GuardAlloc = GuardAlloc;

fn inputs() -> u64 {
    std::env::var("COHORT_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000)
}

fn fuzz(target: Target) {
    assert!(fuzz::guard_installed(), "the allocation guard is this test's global allocator");
    let config = Config { seed: 0x5eed, ..Config::new(target, inputs()) };
    let report = fuzz::run(&config).expect("the harness sets up");
    let findings: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert!(
        report.clean(),
        "{}: {} panics, {} oversized allocations:\n{}",
        target.name(),
        report.panics,
        report.oversize,
        findings.join("\n")
    );
    assert_eq!(report.inputs, inputs());
    // The seeds are valid inputs, so every target accepts something; mutations keep finding new outcomes.
    assert!(report.outcomes > 1, "{}: only {} outcome", target.name(), report.outcomes);
}

#[test]
fn fuzz_frame() {
    fuzz(Target::Frame);
}

#[test]
fn fuzz_handshake_worker() {
    fuzz(Target::HandshakeWorker);
}

#[test]
fn fuzz_handshake_master() {
    fuzz(Target::HandshakeMaster);
}

#[test]
fn fuzz_codec() {
    fuzz(Target::Codec);
}

#[test]
fn fuzz_idx() {
    fuzz(Target::Idx);
}

#[test]
fn fuzz_csv() {
    fuzz(Target::Csv);
}

#[test]
fn fuzz_libsvm() {
    fuzz(Target::Libsvm);
}

#[test]
fn fuzz_npy() {
    fuzz(Target::Npy);
}

#[test]
fn fuzz_ranged() {
    fuzz(Target::Ranged);
}

#[test]
fn fuzz_worker() {
    fuzz(Target::Worker);
}

/// The guard itself: an allocation above the bound while an input runs is reported with its size.
#[test]
fn an_oversized_allocation_is_a_finding() {
    let report = fuzz::replay(Target::Codec, &[], 0).expect("the harness sets up");
    // With a bound of 0 bytes any allocation is oversized; decoding an empty input allocates (errors are strings).
    assert!(matches!(report, Err(fuzz::FindingKind::Oversize(n)) if n > 0), "{report:?}");
}
