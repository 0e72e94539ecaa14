//! A fuzz harness that runs on stable Rust: seeded random mutation of valid inputs against every decoder that reads
//! bytes from outside — frames, both sides of the handshake, the payload codec, every data loader, the ranged reads
//! of file sources, and a worker serving whole frame sequences.
//!
//! Not part of cohort's API (hidden from the docs): the fuzz runner (`crates/cohort/examples/fuzz.rs`) and the fuzz
//! tests drive it. For each [`Target`] a harness builds valid seed inputs (real frames, real handshakes, real IDX,
//! gzip, CSV, libsvm and `.npy` files), then every iteration takes a seed or an earlier input that produced an
//! outcome not seen before, mutates it ([`mutate`]), and runs it:
//!
//! - under `catch_unwind`: a panic is a finding, reported with its message and the input;
//! - under [`GuardAlloc`] if the program installed it: one allocation above the bound (64 MiB by default, far more
//!   than any of these small inputs needs) is a finding, reported with its size and the input;
//! - under a watchdog: an input that runs longer than the hang timeout is reported and ends the process.
//!
//! Everything is drawn from one seed, so a run is repeatable (up to the random nonces of the handshake).

mod guard;
mod mutate;
mod targets;
mod worker;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub use guard::{installed as guard_installed, GuardAlloc, Watched, REFUSE_ABOVE};
use mutate::{Hints, IntField, Mutator};

/// Default bound on a single allocation while an input runs.
pub const DEFAULT_ALLOC_LIMIT: usize = 64 << 20;
/// Default cap on the length of a generated input.
pub const DEFAULT_MAX_INPUT: usize = 16 << 10;

/// What is fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `read_frame` over a stream of frames, with the handshake limit and with the full limit.
    Frame,
    /// `worker_handshake` fed the master's frames.
    HandshakeWorker,
    /// `master_handshake` (`MasterHandshake::on_reply`) fed the worker's reply.
    HandshakeMaster,
    /// `Payload::from_bytes` for the codec's types.
    Codec,
    /// IDX images and labels, raw or gzip.
    Idx,
    /// CSV with several option sets.
    Csv,
    /// libsvm / svmlight.
    Libsvm,
    /// NumPy `.npy`.
    Npy,
    /// `describe` / `read_rows` of IDX and `.npy` file sources.
    Ranged,
    /// A worker's `WorkerCore::handle` fed a sequence of frames.
    Worker,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 10] = [
        Target::Frame,
        Target::HandshakeWorker,
        Target::HandshakeMaster,
        Target::Codec,
        Target::Idx,
        Target::Csv,
        Target::Libsvm,
        Target::Npy,
        Target::Ranged,
        Target::Worker,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Frame => "frame",
            Target::HandshakeWorker => "handshake-worker",
            Target::HandshakeMaster => "handshake-master",
            Target::Codec => "codec",
            Target::Idx => "idx",
            Target::Csv => "csv",
            Target::Libsvm => "libsvm",
            Target::Npy => "npy",
            Target::Ranged => "ranged",
            Target::Worker => "worker",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    fn harness(self, dir: &Path) -> std::io::Result<Box<dyn Harness>> {
        Ok(match self {
            Target::Frame => Box::new(targets::FrameHarness),
            Target::HandshakeWorker => Box::new(targets::HandshakeWorkerHarness::new()),
            Target::HandshakeMaster => Box::new(targets::HandshakeMasterHarness::new()),
            Target::Codec => Box::new(targets::CodecHarness),
            Target::Idx => Box::new(targets::FileHarness::new(dir, targets::FileKind::Idx)?),
            Target::Csv => Box::new(targets::FileHarness::new(dir, targets::FileKind::Csv)?),
            Target::Libsvm => Box::new(targets::FileHarness::new(dir, targets::FileKind::Libsvm)?),
            Target::Npy => Box::new(targets::FileHarness::new(dir, targets::FileKind::Npy)?),
            Target::Ranged => Box::new(targets::FileHarness::new(dir, targets::FileKind::Ranged)?),
            Target::Worker => Box::new(worker::WorkerHarness::new(dir)?),
        })
    }
}

/// The result of running one input: accepted or rejected, and a short description of the outcome (numbers are
/// blurred so that outcomes differing only in a count or an offset count as one).
pub(crate) struct Outcome {
    accepted: bool,
    class: String,
}

impl Outcome {
    pub(crate) fn accepted(class: impl Into<String>) -> Outcome {
        Outcome { accepted: true, class: class.into() }
    }

    pub(crate) fn rejected(class: impl Into<String>) -> Outcome {
        Outcome { accepted: false, class: class.into() }
    }

    /// Accepted if any part was; the classes joined.
    pub(crate) fn all(parts: Vec<Outcome>) -> Outcome {
        let accepted = parts.iter().any(|p| p.accepted);
        Outcome { accepted, class: parts.into_iter().map(|p| p.class).collect::<Vec<_>>().join("|") }
    }

    pub(crate) fn of<T, E: std::fmt::Display>(r: &Result<T, E>) -> Outcome {
        match r {
            Ok(_) => Outcome::accepted("ok"),
            Err(e) => Outcome::rejected(e.to_string()),
        }
    }
}

/// One target's inputs and what to do with them.
pub(crate) trait Harness {
    /// Valid inputs to start from.
    fn seeds(&mut self) -> Vec<Vec<u8>>;
    /// Tokens and integers worth inserting.
    fn hints(&self) -> Hints {
        Hints::default()
    }
    /// Length fields of `input`.
    fn fields(&self, input: &[u8]) -> Vec<IntField> {
        let _ = input;
        Vec::new()
    }
    /// Mutates `input`; the default applies byte-level mutations.
    fn mutate(&mut self, m: &mut Mutator, input: &mut Vec<u8>, others: &[Vec<u8>], hints: &Hints) {
        let fields = self.fields(input);
        m.mutate(input, others, &fields, hints);
    }
    /// Runs one input. Must not panic, whatever the input.
    fn exec(&mut self, input: &[u8]) -> Outcome;
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// What to fuzz.
    pub target: Target,
    /// Inputs to run (mutated or random; the seeds are run first and not counted).
    pub inputs: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Generated inputs are cut to this many bytes.
    pub max_input: usize,
    /// A single allocation above this many bytes is a finding (needs [`GuardAlloc`] installed).
    pub alloc_limit: usize,
    /// An input running longer than this ends the process with a report.
    pub hang_timeout: Duration,
    /// Where to write the inputs of findings (`<target>-<kind>-<iteration>.bin`), if anywhere.
    pub crash_dir: Option<PathBuf>,
    /// Where scratch files go (default: `/dev/shm` if there is one, else the system's temporary directory).
    pub scratch: Option<PathBuf>,
}

impl Config {
    /// Defaults for `target`: `inputs` inputs from seed 0.
    pub fn new(target: Target, inputs: u64) -> Config {
        Config {
            target,
            inputs,
            seed: 0,
            max_input: DEFAULT_MAX_INPUT,
            alloc_limit: DEFAULT_ALLOC_LIMIT,
            hang_timeout: Duration::from_secs(10),
            crash_dir: None,
            scratch: None,
        }
    }
}

/// What went wrong with one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingKind {
    /// The target panicked with this message.
    Panic(String),
    /// One allocation of this many bytes, above the bound.
    Oversize(usize),
}

/// An input that made the target misbehave.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Which input of the run (0-based; seeds are numbered before the mutated inputs, from `u64::MAX` down).
    pub iteration: u64,
    /// What happened.
    pub kind: FindingKind,
    /// The input.
    pub input: Vec<u8>,
    /// Where it was written, if a crash directory was given.
    pub file: Option<PathBuf>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            FindingKind::Panic(m) => write!(f, "input {}: panic: {m}", self.iteration)?,
            FindingKind::Oversize(n) => write!(f, "input {}: one allocation of {n} bytes", self.iteration)?,
        }
        match &self.file {
            Some(p) => write!(f, " (input in {})", p.display()),
            None => write!(f, "; input (hex): {}", hex::encode(&self.input)),
        }
    }
}

/// The summary of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target.
    pub target: Target,
    /// Inputs run (seeds not counted).
    pub inputs: u64,
    /// Seeds run before them.
    pub seeds: usize,
    /// Of the inputs, how many the target accepted (decoded, loaded, answered).
    pub accepted: u64,
    /// Distinct outcomes seen (accepted or each kind of error).
    pub outcomes: usize,
    /// Time spent.
    pub elapsed: Duration,
    /// Largest single allocation of any input, if allocations were watched.
    pub peak_alloc: Option<usize>,
    /// Panics found.
    pub panics: u64,
    /// Oversized allocations found.
    pub oversize: u64,
    /// The first findings (at most 20), with their inputs.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether nothing was found.
    pub fn clean(&self) -> bool {
        self.panics == 0 && self.oversize == 0
    }
}

thread_local! {
    /// Set while this thread runs fuzz inputs: panics are recorded here instead of printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static FIRST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps fuzzing threads quiet and passes other panics to the previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) {
                let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                // The first panic of an input is the one that matters (a later one may only report it).
                FIRST_PANIC.with(|p| {
                    p.borrow_mut().get_or_insert_with(|| format!("{message}{location}"));
                });
            } else {
                previous(info)
            }
        }));
    });
}

/// Blurs the numbers out of an outcome and keeps it short.
fn blur(class: &str) -> String {
    let mut out = String::with_capacity(class.len().min(160));
    let mut last_digit = false;
    for c in class.chars().take(160) {
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('#');
            }
            last_digit = true;
        } else {
            out.push(c);
            last_digit = false;
        }
    }
    out
}

/// A scratch directory removed on drop.
pub(crate) struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    fn new(parent: Option<&Path>, target: Target) -> std::io::Result<Scratch> {
        static N: AtomicU64 = AtomicU64::new(0);
        // Memory-backed when the system has it: a file rewritten a million times stays off the disk.
        let shm = Path::new("/dev/shm");
        let parent = match parent {
            Some(p) => p.to_path_buf(),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        let dir = parent.join(format!(
            "cohort-fuzz-{}-{}-{}",
            target.name(),
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Watches a run's progress from another thread; an input that takes longer than the timeout is reported and the
/// process exits with status 3 (a hang cannot be caught like a panic).
struct Watchdog {
    current: Arc<Mutex<(u64, Vec<u8>)>>,
    progress: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(target: Target, timeout: Duration, crash_dir: Option<PathBuf>, scratch: PathBuf) -> Watchdog {
        let current = Arc::new(Mutex::new((0u64, Vec::new())));
        let progress = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (c, p, d) = (Arc::clone(&current), Arc::clone(&progress), Arc::clone(&done));
        let thread = std::thread::Builder::new()
            .name(format!("fuzz-watchdog-{}", target.name()))
            .spawn(move || {
                let tick = Duration::from_millis(100).min(timeout);
                let (mut seen, mut since) = (p.load(Ordering::Relaxed), Instant::now());
                while !d.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    let now = p.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, since) = (now, Instant::now());
                    } else if since.elapsed() > timeout {
                        let (iteration, input) = c.lock().map(|g| g.clone()).unwrap_or_default();
                        let file = crash_dir.as_ref().map(|dir| dir.join(format!("{}-hang-{iteration}.bin", target.name())));
                        if let Some(f) = &file {
                            let _ = std::fs::create_dir_all(f.parent().unwrap_or(Path::new(".")));
                            let _ = std::fs::write(f, &input);
                        }
                        eprintln!(
                            "cohort fuzz: target `{}` input {iteration} has run for more than {timeout:?}: a hang. Input \
                             (hex): {}",
                            target.name(),
                            hex::encode(&input)
                        );
                        // Exiting skips the scratch directory's destructor.
                        let _ = std::fs::remove_dir_all(&scratch);
                        std::process::exit(3);
                    }
                }
            })
            .expect("cannot start the fuzz watchdog thread");
        Watchdog { current, progress, done, thread: Some(thread) }
    }

    fn enter(&self, iteration: u64, input: &[u8]) {
        if let Ok(mut g) = self.current.lock() {
            g.0 = iteration;
            g.1.clear();
            g.1.extend_from_slice(input);
        }
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one input through a harness, watched; `Err` is a finding.
fn run_one(
    harness: &mut dyn Harness,
    target: Target,
    limit: usize,
    input: &[u8],
) -> (Result<Outcome, FindingKind>, Watched) {
    QUIET.with(|q| q.set(true));
    FIRST_PANIC.with(|p| p.borrow_mut().take());
    let (result, watched) =
        guard::watch(target.name(), limit, input, || catch_unwind(AssertUnwindSafe(|| harness.exec(input))));
    QUIET.with(|q| q.set(false));
    let result = match result {
        // A panic caught inside the target (a worker catches its jobs' panics) counts too.
        Ok(_) if FIRST_PANIC.with(|p| p.borrow().is_some()) => {
            Err(FindingKind::Panic(FIRST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default()))
        }
        Ok(outcome) => match watched.oversize {
            Some(n) => Err(FindingKind::Oversize(n)),
            None => Ok(outcome),
        },
        Err(_) => {
            let message = FIRST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "unknown panic".into());
            Err(FindingKind::Panic(message))
        }
    };
    (result, watched)
}

/// Runs `config.inputs` inputs against `config.target` and reports what happened.
pub fn run(config: &Config) -> std::io::Result<Report> {
    install_panic_hook();
    let target = config.target;
    let scratch = Scratch::new(config.scratch.as_deref(), target)?;
    let mut harness = target.harness(&scratch.dir)?;
    let seeds = harness.seeds();
    let hints = harness.hints();
    let watched = guard::installed();
    let watchdog = Watchdog::start(target, config.hang_timeout, config.crash_dir.clone(), scratch.dir.clone());
    let mut m = Mutator::new(config.seed, config.max_input);
    let mut report = Report {
        target,
        inputs: 0,
        seeds: seeds.len(),
        accepted: 0,
        outcomes: 0,
        elapsed: Duration::ZERO,
        peak_alloc: watched.then_some(0),
        panics: 0,
        oversize: 0,
        findings: Vec::new(),
    };
    let mut seen: HashSet<String> = HashSet::new();
    // Inputs whose outcome was new when they ran: they are mutated further, like seeds.
    let mut pool: Vec<Vec<u8>> = Vec::new();
    const POOL: usize = 1024;
    let started = Instant::now();

    let record =
        |report: &mut Report, iteration: u64, input: &[u8], result: Result<Outcome, FindingKind>, w: Watched| {
            if let Some(peak) = &mut report.peak_alloc {
                *peak = (*peak).max(w.peak);
            }
            match result {
                Ok(outcome) => Some(outcome),
                Err(kind) => {
                    match kind {
                        FindingKind::Panic(_) => report.panics += 1,
                        FindingKind::Oversize(_) => report.oversize += 1,
                    }
                    if report.findings.len() < 20 {
                        let tag = match kind {
                            FindingKind::Panic(_) => "panic",
                            FindingKind::Oversize(_) => "oversize",
                        };
                        let file = config.crash_dir.as_ref().and_then(|dir| {
                            let f = dir.join(format!("{}-{tag}-{iteration}.bin", target.name()));
                            std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&f, input)).ok().map(|_| f)
                        });
                        report.findings.push(Finding { iteration, kind, input: input.to_vec(), file });
                    }
                    None
                }
            }
        };

    for (i, seed) in seeds.iter().enumerate() {
        let iteration = u64::MAX - i as u64;
        watchdog.enter(iteration, seed);
        let (result, w) = run_one(harness.as_mut(), target, config.alloc_limit, seed);
        if let Some(outcome) = record(&mut report, iteration, seed, result, w) {
            seen.insert(format!("{}{}", outcome.accepted, blur(&outcome.class)));
        }
    }

    let mut input = Vec::new();
    for iteration in 0..config.inputs {
        input.clear();
        if m.one_in(64) {
            // A random input, now and then: nothing of the format survives.
            let len = m.below(512);
            input.extend(m.bytes(len));
        } else {
            let parent = if !pool.is_empty() && m.below(5) < 3 {
                &pool[m.below(pool.len())]
            } else {
                &seeds[m.below(seeds.len())]
            };
            input.extend_from_slice(parent);
            let others: &[Vec<u8>] = if m.one_in(2) || pool.is_empty() { &seeds } else { &pool };
            harness.mutate(&mut m, &mut input, others, &hints);
            input.truncate(config.max_input);
        }
        watchdog.enter(iteration, &input);
        let (result, w) = run_one(harness.as_mut(), target, config.alloc_limit, &input);
        report.inputs += 1;
        if let Some(outcome) = record(&mut report, iteration, &input, result, w) {
            report.accepted += u64::from(outcome.accepted);
            if seen.insert(format!("{}{}", outcome.accepted, blur(&outcome.class))) {
                if pool.len() < POOL {
                    pool.push(input.clone());
                } else {
                    let i = m.below(POOL);
                    pool[i] = input.clone();
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    report.outcomes = seen.len();
    drop(watchdog);
    Ok(report)
}

/// Runs one saved input against `target` (to reproduce a finding): its outcome, or the finding.
pub fn replay(target: Target, input: &[u8], alloc_limit: usize) -> std::io::Result<Result<String, FindingKind>> {
    install_panic_hook();
    let scratch = Scratch::new(None, target)?;
    let mut harness = target.harness(&scratch.dir)?;
    let _ = harness.seeds();
    let (result, _) = run_one(harness.as_mut(), target, alloc_limit, input);
    Ok(result.map(|o| format!("{}: {}", if o.accepted { "accepted" } else { "rejected" }, o.class)))
}
