//! The parameter-server jobs in one process: a sequential "server" (plain SGD on the keys each batch selects) trains
//! each model, gradients agree with the models' own functions, configurations round-trip, bad input is an error.

use cohort::ps::{Batch, BatchStats, PsJob, Selection};
use cohort::{Dataset, Payload};

use super::*;
use crate::mlp::Mlp;
use crate::softmax::SoftmaxConfig;
use crate::sparse::{batch_keys, loss_grad, SparseGenerator, SparseSpec};

/// Rows `range` of `data` as a worker's batch.
fn batch(data: &Dataset<f32>, range: std::ops::Range<usize>) -> Batch<'_, f32> {
    let cols = data.cols();
    Batch {
        values: &data.values()[range.start * cols..range.end * cols],
        labels: data.labels().map(|l| &l[range.clone()]),
        cols,
    }
}

/// One step of a parameter server with `sgd:lr` and one worker: select, pull, gradient, push.
fn step<J: PsJob<Elem = f32>>(
    job: &J,
    config: &J::Config,
    params: &mut [f32],
    b: &Batch<'_, f32>,
    lr: f32,
) -> BatchStats {
    let keys = job.keys(config, b);
    let (pulled, at): (Vec<f32>, Vec<usize>) = match &keys {
        Selection::Range { start, end } => {
            ((*start..*end).map(|k| params[k as usize]).collect(), (*start as usize..*end as usize).collect())
        }
        Selection::Keys(keys) => {
            (keys.iter().map(|&k| params[k as usize]).collect(), keys.iter().map(|&k| k as usize).collect())
        }
    };
    let mut grad = vec![0.0; pulled.len()];
    let stats = job.gradient(config, &pulled, &keys, b, &mut grad).unwrap();
    for (&i, g) in at.iter().zip(&grad) {
        params[i] -= lr * g;
    }
    stats
}

/// Epochs of sequential SGD through the job's interface; the evaluation before and after.
fn train<J: Evaluate>(
    job: &J,
    config: &J::Config,
    data: &Dataset<f32>,
    lr: f32,
    size: usize,
    epochs: usize,
) -> (Evaluation, Evaluation, Vec<f32>) {
    let mut params = job.init(config, 7);
    assert_eq!(params.len() as u64, job.num_params(config));
    let before = job.evaluate(config, &params, data).unwrap();
    for _ in 0..epochs {
        for start in (0..data.rows()).step_by(size) {
            let stats = step(job, config, &mut params, &batch(data, start..(start + size).min(data.rows())), lr);
            assert!(stats.loss_sum.is_finite() && stats.rows > 0);
        }
    }
    (before, job.evaluate(config, &params, data).unwrap(), params)
}

fn classes_data(rows: usize) -> Dataset<f32> {
    crate::datasets::generated(rows, 5).unwrap()
}

#[test]
fn softmax_trains_and_its_gradient_is_the_models() {
    let data = classes_data(600);
    let config = SoftmaxConfig::new(10, 784, 1e-3);
    // The generated images are noisy: a linear model reaches about 0.65 here (chance: 0.1).
    let (before, after, params) = train(&SoftmaxPs, &config, &data, 0.5, 50, 3);
    assert!((before.loss - 10f64.ln()).abs() < 1e-9 && before.accuracy < 0.2, "{before:?}");
    assert!(after.loss < 0.5 * before.loss && after.accuracy > 0.5, "{before:?} → {after:?}");
    // The batch gradient is SoftmaxConfig's (mean plus decay), rounded to f32; the stats are its sums.
    let b = batch(&data, 100..164);
    let mut grad = vec![0.0; params.len()];
    let stats = SoftmaxPs.gradient(&config, &params, &SoftmaxPs.keys(&config, &b), &b, &mut grad).unwrap();
    let shard = crate::ps::shard_of(&b);
    let theta = SoftmaxPs::theta(&params);
    let (cost, expected) = config.cost_grad(&theta, &shard).unwrap();
    assert!(grad.iter().zip(&expected).all(|(g, e)| *g == *e as f32));
    let decay = 0.5 * 1e-3 * theta[..7840].iter().map(|w| w * w).sum::<f64>();
    assert!((stats.loss_sum / 64.0 + decay - cost).abs() < 1e-12);
    assert_eq!(stats.correct as f64 / 64.0, config.accuracy(&theta, &shard).unwrap());
    assert_eq!(stats.rows, 64);
}

#[test]
fn mlp_trains_from_its_seeded_init() {
    let data = crate::datasets::Scaling::fit(&classes_data(600)).apply(classes_data(600)).unwrap();
    let mlp = Mlp::new(&[784, 16, 10]).unwrap();
    assert_eq!(MlpPs.init(&mlp, 7), mlp.init(7));
    let (before, after, _) = train(&MlpPs, &mlp, &data, 0.05, 32, 3);
    assert!(after.loss < 0.5 * before.loss && after.accuracy > 0.8, "{before:?} → {after:?}");
}

#[test]
fn sparse_batches_select_their_keys_and_train() {
    let set =
        SparseGenerator::new(SparseSpec { rows: 1_000, features: 20_000, nnz: 30, seed: 4, ..SparseSpec::default() })
            .unwrap()
            .dataset()
            .unwrap();
    let config = SparseLogRegConfig::for_data(&set, 1e-4).unwrap();
    let b = batch(&set.data, 0..40);
    let rows = set.rows_view().unwrap().batch(0..40).unwrap();
    let Selection::Keys(keys) = SparseLogRegPs.keys(&config, &b) else { panic!("a sparse job selects keys") };
    assert_eq!(keys, batch_keys(&rows));
    assert!(keys.len() < 40 * 30 && keys.len() > 30);
    // The gradient is loss_grad's over the batch's mean.
    let weights: Vec<f32> = keys.iter().map(|&k| (k % 5) as f32 * 0.1 - 0.2).collect();
    let mut grad = vec![0.0; keys.len()];
    let stats = SparseLogRegPs.gradient(&config, &weights, &Selection::Keys(keys.clone()), &b, &mut grad).unwrap();
    let (loss, plain) = loss_grad(&keys, &weights, &rows, 1e-4).unwrap();
    assert_eq!(stats.loss_sum, loss);
    assert!(grad.iter().zip(&plain).all(|(g, p)| (f64::from(*g) - f64::from(*p) / 40.0).abs() < 1e-6));
    let (before, after, _) = train(&SparseLogRegPs, &config, &set.data, 50.0, 50, 3);
    assert!((before.loss - 2f64.ln()).abs() < 1e-9, "{before:?}");
    assert!(after.loss < 0.7 * before.loss && after.accuracy > 0.9, "{before:?} → {after:?}");
}

#[test]
fn configurations_travel_and_bad_ones_are_refused() {
    let softmax = SoftmaxConfig::new(10, 784, 1e-4);
    assert_eq!(SoftmaxConfig::from_bytes(&softmax.to_bytes()).unwrap(), softmax);
    let mlp = Mlp::new(&[784, 32, 10]).unwrap();
    assert_eq!(Mlp::from_bytes(&mlp.to_bytes()).unwrap(), mlp);
    let sparse = SparseLogRegConfig::new(1 << 18, 60, 1e-4).unwrap();
    assert_eq!(SparseLogRegConfig::from_bytes(&sparse.to_bytes()).unwrap(), sparse);
    // A shape Mlp::new refuses does not decode.
    let bad = vec![784u64, 0, 10].to_bytes();
    let e = Mlp::from_bytes(&bad).unwrap_err();
    assert!(e.to_string().contains("layer 1 has no units"), "{e}");
    for (f, w, l2, needle) in [
        (0, 5, 0.0, "0 features"),
        ((1 << 24) + 1, 5, 0.0, "16777217 features"),
        (10, 0, 0.0, "0 non-zeros"),
        (10, 5, -1.0, "-1"),
    ] {
        let e = SparseLogRegConfig::new(f, w, l2).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    // A model too large to allocate gets no parameters: the master refuses the run.
    assert!(SoftmaxPs.init(&SoftmaxConfig::new(1 << 20, 1 << 20, 0.0), 0).is_empty());
    assert!(SparseLogRegPs.init(&SparseLogRegConfig { features: usize::MAX, width: 1, l2: 0.0 }, 0).is_empty());
}

#[test]
fn bad_batches_and_parameters_are_errors_naming_the_value() {
    // Softmax: a label that is not a class; an invalid shape.
    let data = Dataset::new(vec![0.5f32; 8], 4).unwrap().with_labels(vec![1.0, 12.0]).unwrap();
    let config = SoftmaxConfig::new(10, 4, 0.0);
    let mut grad = vec![0.0; 50];
    let e = SoftmaxPs.gradient(
        &config,
        &[0.0; 50],
        &Selection::Range { start: 0, end: 50 },
        &batch(&data, 0..2),
        &mut grad,
    );
    let e = e.unwrap_err();
    assert!(e.contains("softmax.ps") && e.contains("label 12 at row 1"), "{e}");
    let one = SoftmaxConfig::new(1, 4, 0.0);
    let e =
        SoftmaxPs.gradient(&one, &[0.0; 5], &Selection::Range { start: 0, end: 5 }, &batch(&data, 0..2), &mut [0.0; 5]);
    assert!(e.unwrap_err().contains("1 classes"));
    // MLP: rows of the wrong width; parameters of the wrong length.
    let mlp = Mlp::new(&[3, 4, 2]).unwrap();
    let n = mlp.n_params();
    let e = MlpPs.gradient(
        &mlp,
        &vec![0.0; n],
        &MlpPs.keys(&mlp, &batch(&data, 0..2)),
        &batch(&data, 0..2),
        &mut vec![0.0; n],
    );
    assert!(e.unwrap_err().contains("expects rows of 3 values"));
    let e = MlpPs.evaluate(&mlp, &[0.0; 3], &data).unwrap_err();
    assert!(e.to_string().contains("MLP parameter vector has 3 values"), "{e}");
    // Sparse: a key beyond the model pulls nothing and fails naming the row and key; the wrong encoding width.
    let set = SparseGenerator::new(SparseSpec { rows: 20, features: 5_000, nnz: 10, seed: 2, ..SparseSpec::default() })
        .unwrap()
        .dataset()
        .unwrap();
    let small = SparseLogRegConfig { features: 50, ..SparseLogRegConfig::for_data(&set, 0.0).unwrap() };
    let b = batch(&set.data, 0..20);
    assert_eq!(SparseLogRegPs.keys(&small, &b), Selection::Keys(Vec::new()));
    let e = SparseLogRegPs.gradient(&small, &[], &Selection::Keys(Vec::new()), &b, &mut []).unwrap_err();
    assert!(e.contains("sparse row") && e.contains("beyond the model's 50 features"), "{e}");
    let narrow = SparseLogRegConfig { width: set.width - 1, ..SparseLogRegConfig::for_data(&set, 0.0).unwrap() };
    let e = SparseLogRegPs.gradient(&narrow, &[], &Selection::Keys(Vec::new()), &b, &mut []).unwrap_err();
    assert!(e.contains(&format!("rows of {} values", 2 * set.width - 1)), "{e}");
    let good = SparseLogRegConfig::for_data(&set, 0.0).unwrap();
    let e = SparseLogRegPs.gradient(&good, &[], &Selection::Range { start: 0, end: 5_000 }, &b, &mut []).unwrap_err();
    assert!(e.contains("not a range"), "{e}");
    let e = SparseLogRegPs.evaluate(&good, &[0.0; 10], &set.data).unwrap_err();
    assert!(e.to_string().contains("has 10 values but 5000"), "{e}");
}

#[test]
fn saved_models_read_back_as_the_models_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = SoftmaxConfig::new(3, 2, 0.25);
    let params: Vec<f32> = (0..9).map(|i| i as f32 * 0.5).collect();
    let path = dir.path().join("softmax.safetensors");
    SoftmaxPs::save_model(&path, &config, &params, serde_json::json!({ "clocks": 3 })).unwrap();
    let m = crate::model_file::load(&path).unwrap();
    assert_eq!(m.kind, "softmax");
    assert_eq!(m.params, crate::model_file::Params::F64(SoftmaxPs::theta(&params)));
    assert_eq!((m.architecture["classes"].as_u64(), m.architecture["lambda"].as_f64()), (Some(3), Some(0.25)));
    let mlp = Mlp::new(&[2, 3, 2]).unwrap();
    let theta = mlp.init(1);
    let scaling = crate::datasets::Scaling { mean: vec![0.5, 1.0], scale: vec![2.0, 4.0] };
    let path = dir.path().join("mlp.safetensors");
    MlpPs::save_model(&path, &mlp, &theta, Some(&scaling), serde_json::json!({})).unwrap();
    let m = crate::model_file::load(&path).unwrap();
    assert_eq!((m.kind.as_str(), m.params.clone()), ("mlp", crate::model_file::Params::F32(theta)));
    assert_eq!(m.extra.len(), 2);
    let sparse = SparseLogRegConfig::new(4, 2, 1e-3).unwrap();
    let path = dir.path().join("sparse.safetensors");
    SparseLogRegPs::save_model(&path, &sparse, &[1.0, 2.0, 3.0, 4.0], serde_json::json!({})).unwrap();
    let m = crate::model_file::load(&path).unwrap();
    assert_eq!((m.kind.as_str(), m.architecture["width"].as_u64()), ("sparse_logreg", Some(2)));
}
