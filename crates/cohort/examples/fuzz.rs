//! The fuzz runner: mutated inputs against cohort's decoders and loaders, with every allocation watched.
//!
//! ```sh
//! cargo run --release -p cohort --example fuzz -- --target all --inputs 1000000 --jobs 2
//! cargo run --release -p cohort --example fuzz -- --target frame --inputs 100000 --seed 7 --crash-dir fuzz-crashes
//! cargo run --release -p cohort --example fuzz -- --target worker --replay fuzz-crashes/worker-panic-123.bin
//! ```
//!
//! Prints one row per target (inputs, time, inputs per second, accepted share, distinct outcomes, largest single
//! allocation, panics, oversized allocations) and every finding with its input; exits with status 1 if anything was
//! found. It is an example rather than a `cohort` subcommand so that the allocation guard is this program's global
//! allocator and never sits under a real training run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cohort::fuzz::{self, Config, GuardAlloc, Report, Target};

#[global_allocator]
static ALLOC: GuardAlloc = GuardAlloc;

const USAGE: &str = "usage: fuzz [--target all|NAME[,NAME...]] [--inputs N] [--seed S] [--jobs J] [--max-input BYTES]
            [--alloc-limit-mib M] [--hang-secs S] [--crash-dir DIR] [--scratch DIR] [--replay FILE] [--dump FILE]
targets: frame handshake-worker handshake-master codec idx csv libsvm npy ranged worker";

struct Args {
    targets: Vec<Target>,
    inputs: u64,
    seed: u64,
    jobs: usize,
    max_input: usize,
    alloc_limit: usize,
    hang: Duration,
    crash_dir: Option<PathBuf>,
    scratch: Option<PathBuf>,
    replay: Option<PathBuf>,
    dump: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        targets: Target::ALL.to_vec(),
        inputs: 1_000_000,
        seed: 1,
        jobs: 1,
        max_input: fuzz::DEFAULT_MAX_INPUT,
        alloc_limit: fuzz::DEFAULT_ALLOC_LIMIT,
        hang: Duration::from_secs(10),
        crash_dir: None,
        scratch: None,
        replay: None,
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.replace('_', "").parse::<u64>().map_err(|_| format!("{flag}: `{v}` is not a number"));
        match flag.as_str() {
            "--target" | "--targets" => {
                a.targets = if value == "all" {
                    Target::ALL.to_vec()
                } else {
                    value
                        .split(',')
                        .map(|n| Target::from_name(n.trim()).ok_or_else(|| format!("unknown target `{n}`")))
                        .collect::<Result<_, _>>()?
                }
            }
            "--inputs" => a.inputs = number(&value)?,
            "--seed" => a.seed = number(&value)?,
            "--jobs" => a.jobs = number(&value)?.max(1) as usize,
            "--max-input" => a.max_input = number(&value)?.max(1) as usize,
            "--alloc-limit-mib" => a.alloc_limit = (number(&value)? as usize) << 20,
            "--hang-secs" => a.hang = Duration::from_secs(number(&value)?.max(1)),
            "--crash-dir" => a.crash_dir = Some(value.into()),
            "--scratch" => a.scratch = Some(value.into()),
            "--replay" => a.replay = Some(value.into()),
            "--dump" => a.dump = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

fn row(r: &Report) -> String {
    format!(
        "{:<17} {:>10} {:>8.1} {:>10.0} {:>8.1}% {:>8} {:>12} {:>7} {:>9}",
        r.target.name(),
        r.inputs,
        r.elapsed.as_secs_f64(),
        r.rate(),
        100.0 * r.accepted as f64 / r.inputs.max(1) as f64,
        r.outcomes,
        r.peak_alloc.map_or("not watched".into(), mib),
        r.panics,
        r.oversize
    )
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &args.dump {
        // The frames of a saved input, one per line.
        let input = std::fs::read(file).unwrap_or_default();
        let mut r = input.as_slice();
        loop {
            match cohort::wire::read_frame(&mut r, cohort::wire::MAX_FRAME) {
                Ok(Some(f)) => println!("{:?} + {} payload bytes", f.message, f.payload.len()),
                Ok(None) => break,
                Err(e) => {
                    println!("then: {e}");
                    break;
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    if let Some(file) = &args.replay {
        let input = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let mut found = false;
        for &target in &args.targets {
            match fuzz::replay(target, &input, args.alloc_limit) {
                Ok(Ok(outcome)) => println!("{}: {outcome}", target.name()),
                Ok(Err(finding)) => {
                    found = true;
                    println!("{}: FOUND {finding:?}", target.name())
                }
                Err(e) => eprintln!("{}: cannot set up: {e}", target.name()),
            }
        }
        return if found { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }

    println!(
        "cohort fuzz: {} inputs per target, seed {}, inputs up to {} bytes, one allocation above {} is a finding{}",
        args.inputs,
        args.seed,
        args.max_input,
        mib(args.alloc_limit),
        if fuzz::guard_installed() { "" } else { " (allocations NOT watched)" }
    );
    println!(
        "{:<17} {:>10} {:>8} {:>10} {:>9} {:>8} {:>12} {:>7} {:>9}",
        "target", "inputs", "seconds", "inputs/s", "accepted", "outcomes", "peak alloc", "panics", "oversized"
    );
    let configs: Vec<Config> = args
        .targets
        .iter()
        .map(|&t| Config {
            seed: args.seed,
            max_input: args.max_input,
            alloc_limit: args.alloc_limit,
            hang_timeout: args.hang,
            crash_dir: args.crash_dir.clone(),
            scratch: args.scratch.clone(),
            ..Config::new(t, args.inputs)
        })
        .collect();
    // `jobs` threads take targets from a shared queue; rows print as targets finish.
    let queue = std::sync::Mutex::new(configs.into_iter());
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.jobs {
            s.spawn(|| loop {
                let Some(config) = queue.lock().unwrap().next() else { return };
                match fuzz::run(&config) {
                    Ok(report) => {
                        println!("{}", row(&report));
                        reports.lock().unwrap().push(report);
                    }
                    Err(e) => eprintln!("{}: cannot set up: {e}", config.target.name()),
                }
            });
        }
    });
    let reports = reports.into_inner().unwrap();
    let mut clean = reports.len() == args.targets.len();
    for r in &reports {
        for f in &r.findings {
            println!("{}: {f}", r.target.name());
        }
        clean &= r.clean();
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
