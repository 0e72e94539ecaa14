//! MLP benchmarks: `cohort bench psgd` (Weimer's two figures: objective against passes for sequential SGD and
//! model averaging with 2, 4 and 8 workers, and time per pass against the worker count) and `cohort bench sweep`
//! (the seed's parameter experiments, each relative to a 1-worker, 32-neuron, 1-hidden-layer, 1-epoch run).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use cohort::WorkerSpec;
use cohort_ml::datasets::{self, Request};
use cohort_ml::mlp::jobs::TrainSpec;
use cohort_ml::mlp::optimizer::OptimizerSpec;
use cohort_ml::mlp::Mlp;
use cohort_ml::train::{AveragingTrainer, Driver, Schedule};

use crate::cli::{MlpArgs, PsgdArgs, SweepArgs};
use crate::commands::mlp::{self, block_momentum, Verbosity};
use crate::plot::Chart;

/// `cohort bench psgd`.
pub fn psgd(args: PsgdArgs) -> Result<()> {
    let counts: Vec<usize> = args
        .workers
        .split(',')
        .map(|s| s.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .with_context(|| format!("--workers {:?} must list positive worker counts, e.g. 1,2,4,8", args.workers))?;
    if args.passes == 0 {
        bail!("--passes must be at least 1");
    }
    let request = Request {
        name: &args.dataset,
        train_rows: args.train_rows,
        test_rows: Some(10_000),
        seed: args.seed,
        ..Request::default()
    };
    let data = datasets::prepare(&request)?;
    let model = Mlp::new(&Mlp::parse_layers(&args.layers).context("--layers")?).context("--layers")?;
    if model.inputs() != data.train.cols() {
        bail!("--layers starts with {} inputs but the data has {} values per row", model.inputs(), data.train.cols());
    }
    let rule = |lr: f32| match args.optimizer.as_str() {
        "adam" => Ok(OptimizerSpec::adam(lr)),
        "sgd" => Ok(OptimizerSpec::Sgd { lr, momentum: 0.9 }),
        other => bail!("--optimizer {other:?}: use adam or sgd"),
    };
    let spec = TrainSpec {
        layers: model.layers().to_vec(),
        optimizer: rule(args.lr)?,
        batch: args.batch,
        steps: args.avg_every,
        block_momentum: 0.0,
    };
    println!(
        "parallel SGD with model averaging (every {} mini-batches; 0 = once per pass): MLP {:?}, {} lr {} (constant{}), batch {}, {} ({} rows); \
         objective = mean training loss of the averaged model on all rows",
        args.avg_every,
        model.layers(),
        args.optimizer,
        args.lr,
        if args.scale_lr { ", × workers" } else { "" },
        args.batch,
        data.source,
        data.train.rows()
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let train = data.train.as_shard();
    let start = model.evaluate(&model.init(args.seed), &train)?.loss;
    let mut curves: Vec<(usize, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut csv = String::from("workers,pass,objective,test_accuracy,seconds\n");
    for &n in &counts {
        let mut cluster = crate::launch::builder(
            WorkerSpec::parse_list(&format!("local:{n}"))?,
            Vec::new(),
            &MlpArgs::parse_from(&[])?.common.launch,
        )?
        .start()
        .with_context(|| format!("starting {n} local workers"))?;
        let h = cluster.load(&data.train)?;
        let mut spec = spec.clone();
        if args.scale_lr {
            spec.optimizer = rule(args.lr * n as f32)?;
        }
        spec.block_momentum = block_momentum(&args.block_momentum, n)?;
        // One epoch of the trainer is one pass over the data: one round, or rounds of K mini-batches.
        let mut trainer =
            AveragingTrainer::new(spec, model.init(args.seed), Schedule::Constant, args.passes, args.seed)?;
        let (mut objective, mut seconds) = (Vec::new(), Vec::new());
        let mut last = Instant::now();
        let mut failure = None;
        Driver::new()
            .run(&mut trainer, &mut cluster, &h, |t, r| {
                let dt = last.elapsed().as_secs_f64();
                let evaluated = model
                    .evaluate(t.theta(), &train)
                    .and_then(|l| model.evaluate(t.theta(), &data.test.as_shard()).map(|a| (l.loss, a.accuracy)));
                match evaluated {
                    Ok((loss, test)) => {
                        csv.push_str(&format!("{n},{},{loss},{test},{dt}\n", r.step));
                        objective.push(loss);
                        seconds.push(dt);
                    }
                    Err(e) => failure = Some(e),
                }
                last = Instant::now();
            })
            .with_context(|| format!("{n} workers"))?;
        if let Some(e) = failure {
            bail!("{n} workers: {e}");
        }
        cluster.shutdown();
        curves.push((n, objective, seconds));
    }

    println!("\nobjective (training loss) after each pass; pass 0 = {start:.4}");
    print!("{:>5}", "pass");
    for (n, ..) in &curves {
        print!("  {:>11}", if *n == 1 { "sequential".to_string() } else { format!("avg {n}") });
    }
    println!();
    for p in 0..args.passes {
        print!("{:>5}", p + 1);
        for (_, obj, _) in &curves {
            print!("  {:>11.4}", obj[p]);
        }
        println!();
    }
    if let Some((_, seq, _)) = curves.iter().find(|(n, ..)| *n == 1) {
        println!("\nextra passes model averaging needs to reach the sequential objective after p passes ('-': not within {})", args.passes);
        print!("{:>5}  {:>10}", "p", "objective");
        for (n, ..) in curves.iter().filter(|(n, ..)| *n != 1) {
            print!("  {:>8}", format!("avg {n}"));
        }
        println!();
        for (p, &target) in seq.iter().enumerate() {
            print!("{:>5}  {target:>10.4}", p + 1);
            for (_, obj, _) in curves.iter().filter(|(n, ..)| *n != 1) {
                match obj.iter().position(|&v| v <= target) {
                    Some(q) => print!("  {:>+8}", q as i64 - p as i64),
                    None => print!("  {:>8}", "-"),
                }
            }
            println!();
        }
    }
    println!("\ntime per pass");
    println!("{:>8}  {:>10}  {:>10}", "workers", "mean (s)", "min (s)");
    let mut time_csv = String::from("workers,mean_seconds,min_seconds\n");
    let mut time_points = Vec::new();
    for (n, _, secs) in &curves {
        let mean = secs.iter().sum::<f64>() / secs.len() as f64;
        let min = secs.iter().cloned().fold(f64::INFINITY, f64::min);
        println!("{n:>8}  {mean:>10.3}  {min:>10.3}");
        time_csv.push_str(&format!("{n},{mean},{min}\n"));
        time_points.push((*n as f64, mean));
    }

    let mut chart = Chart::new("Objective vs passes (model averaging)", "passes", "training loss (log scale)");
    chart.log_y = true;
    for (n, obj, _) in &curves {
        let name = if *n == 1 { "sequential SGD".to_string() } else { format!("averaging, {n} workers") };
        let mut pts = vec![(0.0, start)];
        pts.extend(obj.iter().enumerate().map(|(i, &v)| ((i + 1) as f64, v)));
        chart = chart.line(&name, pts);
    }
    let files = [
        ("psgd_objective.csv", csv),
        ("psgd_time.csv", time_csv),
        ("psgd_objective.svg", chart.to_svg()),
        (
            "psgd_time.svg",
            Chart::new("Time per pass", "workers", "seconds per pass").line("mean time per pass", time_points).to_svg(),
        ),
    ];
    for (name, text) in files {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("\nwrote psgd_objective.{{csv,svg}} and psgd_time.{{csv,svg}} in {}", args.out.display());
    Ok(())
}

/// One run of the sweep.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    loss: f64,
    accuracy: f64,
    seconds: f64,
}

/// `cohort bench sweep`.
pub fn sweep(args: SweepArgs) -> Result<()> {
    let data = datasets::prepare(&Request {
        name: &args.dataset,
        train_rows: args.train_rows,
        seed: args.seed,
        ..Request::default()
    })?;
    let grids: [(&str, Vec<usize>); 4] = if args.quick {
        [
            ("workers", vec![1, 2]),
            ("neurons per layer", vec![32, 128]),
            ("hidden layers", vec![1, 4]),
            ("epochs", vec![1, 5]),
        ]
    } else {
        [
            ("workers", vec![1, 2, 3, 4]),
            ("neurons per layer", vec![32, 128, 256, 512]),
            ("hidden layers", vec![1, 4, 8]),
            ("epochs", vec![1, 5, 10, 20]),
        ]
    };
    println!(
        "parameter sweep on {} ({} training rows, {} test rows): Adam, batch 64, model averaging once per epoch; \
         loss and accuracy on the test set, time = training time; each relative to the baseline (1 worker, 32 \
         neurons, 1 hidden layer, 1 epoch)",
        data.source,
        data.train.rows(),
        data.test.rows()
    );
    let baseline = run_one(&data, 1, 32, 1, 1, args.seed)?;
    println!(
        "baseline: loss {:.4}, accuracy {:.4}, time {:.3} s\n",
        baseline.loss, baseline.accuracy, baseline.seconds
    );
    let mut csv = String::from("parameter,value,loss,accuracy,seconds,loss_pct,accuracy_pct,time_pct\n");
    for (name, values) in grids {
        println!("{name}");
        println!("{:>8}  {:>8}  {:>10}  {:>8}", "value", "loss %", "accuracy %", "time %");
        for v in values {
            let (w, n, l, e) = match name {
                "workers" => (v, 32, 1, 1),
                "neurons per layer" => (1, v, 1, 1),
                "hidden layers" => (1, 32, v, 1),
                _ => (1, 32, 1, v),
            };
            let o = if (w, n, l, e) == (1, 32, 1, 1) { baseline } else { run_one(&data, w, n, l, e, args.seed)? };
            let pct = |a: f64, b: f64| 100.0 * a / b;
            let (lp, ap, tp) =
                (pct(o.loss, baseline.loss), pct(o.accuracy, baseline.accuracy), pct(o.seconds, baseline.seconds));
            println!("{v:>8}  {lp:>8.1}  {ap:>10.1}  {tp:>8.1}");
            csv.push_str(&format!("{name},{v},{},{},{},{lp},{ap},{tp}\n", o.loss, o.accuracy, o.seconds));
        }
        println!();
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_one(
    data: &datasets::TrainTest,
    workers: usize,
    neurons: usize,
    layers: usize,
    epochs: usize,
    seed: u64,
) -> Result<Outcome> {
    let workers = format!("local:{workers}");
    let (neurons, layers, epochs) = (neurons.to_string(), layers.to_string(), epochs.to_string());
    let seed = seed.to_string();
    let args = MlpArgs::parse_from(&[
        "--workers",
        &workers,
        "--hidden",
        &neurons,
        "--depth",
        &layers,
        "--epochs",
        &epochs,
        "--seed",
        &seed,
    ])?;
    let r = mlp::train(&args, data, Verbosity::Quiet)?;
    Ok(Outcome { loss: r.test_loss, accuracy: r.test_accuracy, seconds: r.per_epoch.iter().map(|e| e.seconds).sum() })
}
