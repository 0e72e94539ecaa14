//! Tests across the sparse modules: file round trip, the power law of the generated frequencies, the gradient against
//! finite differences, determinism, and that the baseline learns the hidden weights.

use cohort::rng::Rng;
use cohort::tree::Tree;
use cohort::MapReduce;

use super::*;
use crate::partial::Partial;

fn spec(rows: usize, features: usize, nnz: usize, seed: u64) -> SparseSpec {
    SparseSpec { rows, features, nnz, seed, ..SparseSpec::default() }
}

#[test]
fn generated_rows_round_trip_through_a_libsvm_file() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, name) in [(ValueKind::TfIdf, "tfidf.svm"), (ValueKind::Binary, "binary.svm")] {
        let g = SparseGenerator::new(SparseSpec { values: kind, ..spec(200, 30_000, 60, 3) }).unwrap();
        let path = dir.path().join(name);
        let stats = g.write_libsvm_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), stats.bytes);
        let expected = g.dataset().unwrap();
        let options = SparseLoadOptions::default().features(30_000).width(g.max_nnz());
        let loaded = load_libsvm_sparse(&path, &options).unwrap();
        assert_eq!((loaded.rows(), loaded.width, loaded.features), (200, g.max_nnz(), 30_000));
        assert_eq!(loaded.nonzeros, stats.nonzeros);
        assert_eq!(loaded.data.id(), expected.data.id(), "{name}: the rows read back differ");
        // Without a width, the widest row's.
        let tight = load_libsvm_sparse(&path, &SparseLoadOptions::default()).unwrap();
        assert_eq!(tight.width, stats.max_nnz);
        let positives = tight.data.labels().unwrap().iter().filter(|&&l| l == 1.0).count();
        assert_eq!(positives, stats.positives);
        // The same spec writes the same bytes.
        let again = dir.path().join("again.svm");
        SparseGenerator::new(g.spec().clone()).unwrap().write_libsvm_file(&again).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&again).unwrap());
    }
}

/// Least-squares slope of `ln count` against `ln rank` over ranks `lo..=hi` (1-based) of the counts sorted
/// from the most frequent key down.
fn rank_frequency_slope(counts: &mut [u32], lo: usize, hi: usize) -> f64 {
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let points: Vec<(f64, f64)> = (lo..=hi).map(|r| ((r as f64).ln(), f64::from(counts[r - 1].max(1)).ln())).collect();
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    cov / var
}

#[test]
fn feature_frequencies_follow_the_power_law() {
    for zipf in [1.0, 1.5] {
        let rows = 3000;
        let g = SparseGenerator::new(SparseSpec { zipf, ..spec(rows, 100_000, 40, 11) }).unwrap();
        let mut counts = vec![0u32; 100_000];
        let mut row = GeneratedRow::default();
        for i in 0..rows as u64 {
            g.row_into(i, &mut row);
            for &k in &row.keys {
                counts[k as usize] += 1;
            }
        }
        let top = *counts.iter().max().unwrap() as f64 / rows as f64;
        let rare = counts.iter().filter(|&&c| (c as usize) < rows / 100).count() as f64 / 100_000.0;
        let slope = rank_frequency_slope(&mut counts, 10, 1000);
        assert!(top > 0.9, "zipf {zipf}: the most frequent key is in {top:.2} of the rows");
        assert!(rare > 0.95, "zipf {zipf}: only {rare:.3} of the keys are in fewer than 1 % of the rows");
        assert!((slope + zipf).abs() < 0.25 * zipf, "zipf {zipf}: rank-frequency slope {slope:.3}");
    }
}

/// A small instance: its rows, the keys they touch and random weights for those keys.
fn small_batch(seed: u64) -> (SparseDataset, Vec<u64>, Vec<f32>) {
    let set = SparseGenerator::new(spec(12, 200, 8, seed)).unwrap().dataset().unwrap();
    let rows = set.rows_view().unwrap().batch(0..12).unwrap();
    let keys = batch_keys(&rows);
    let mut rng = Rng::new(seed);
    let weights = keys.iter().map(|_| (0.5 * rng.normal()) as f32).collect();
    (set, keys, weights)
}

#[test]
fn gradient_matches_finite_differences() {
    let (set, keys, weights) = small_batch(5);
    let rows = set.rows_view().unwrap().batch(0..12).unwrap();
    let l2 = 0.1;
    let (_, grad) = loss_grad(&keys, &weights, &rows, l2).unwrap();
    let h = 1e-2f32;
    let (mut diff, mut sum) = (0.0, 0.0);
    for i in 0..keys.len() {
        let (mut up, mut down) = (weights.clone(), weights.clone());
        up[i] += h;
        down[i] -= h;
        let step = f64::from(up[i]) - f64::from(down[i]);
        let numeric =
            (loss_grad(&keys, &up, &rows, l2).unwrap().0 - loss_grad(&keys, &down, &rows, l2).unwrap().0) / step;
        diff += (numeric - f64::from(grad[i])).powi(2);
        sum += (numeric + f64::from(grad[i])).powi(2);
    }
    let err = (diff / sum).sqrt();
    assert!(err < 1e-5, "relative error {err:e}");
    // The decay term: each row adds (λ/2)·w_k² for each of its keys, so the gradient of key k grows by
    // λ·w_k·(rows holding k).
    let (plain, g0) = loss_grad(&keys, &weights, &rows, 0.0).unwrap();
    let (decayed, g1) = loss_grad(&keys, &weights, &rows, l2).unwrap();
    let holding = |k: u64| rows.iter().filter(|r| r.keys().any(|j| j == k)).count() as f64;
    let squares: f64 = keys.iter().zip(&weights).map(|(&k, &w)| holding(k) * f64::from(w).powi(2)).sum();
    assert!((decayed - plain - 0.5 * l2 * squares).abs() < 1e-9);
    for i in 0..keys.len() {
        let expected = l2 * holding(keys[i]) * f64::from(weights[i]);
        assert!((f64::from(g1[i] - g0[i]) - expected).abs() < 1e-5, "key {}", keys[i]);
    }
    // On the whole data set, the batch's L / b is the objective the evaluation reports.
    let dense = {
        let mut d = vec![0.0f32; 200];
        for (&k, &w) in keys.iter().zip(&weights) {
            d[k as usize] = w;
        }
        d
    };
    let e = evaluate(&dense, l2, &set.rows_view().unwrap()).unwrap();
    assert!((decayed / 12.0 - e.objective).abs() < 1e-12, "{} vs {}", decayed / 12.0, e.objective);
}

#[test]
fn batch_functions_and_the_evaluation_are_deterministic() {
    let set = SparseGenerator::new(spec(400, 20_000, 40, 9)).unwrap().dataset().unwrap();
    let view = set.rows_view().unwrap();
    let batch = view.batch(100..164).unwrap();
    let keys = batch_keys(&batch);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    let touched: usize = batch.iter().map(|r| r.nnz()).sum();
    assert!(keys.len() < touched, "the frequent keys are shared between rows");
    let weights: Vec<f32> = keys.iter().map(|&k| (k % 7) as f32 * 0.1 - 0.3).collect();
    let (a, ga) = loss_grad(&keys, &weights, &batch, 1e-3).unwrap();
    let (b, gb) = loss_grad(&keys, &weights, &batch, 1e-3).unwrap();
    assert_eq!(a.to_bits(), b.to_bits());
    assert_eq!(ga.iter().map(|g| g.to_bits()).collect::<Vec<_>>(), gb.iter().map(|g| g.to_bits()).collect::<Vec<_>>());

    // The evaluation job over the fixed tree: bit-identical for a fixed chunk count, and close to the sequential
    // evaluation for any.
    let dense: Vec<f32> = (0..20_000).map(|k| (k % 5) as f32 * 0.2 - 0.4).collect();
    let sequential = evaluate(&dense, 1e-4, &view).unwrap();
    for chunks in [1, 3, 7] {
        let data = set.data.clone().with_chunks(chunks).unwrap();
        let run = || {
            let tree = Tree::new(chunks as u32);
            let mut leaf = |c: u32| Ok::<_, ()>(SparseLogRegEval.map(&dense, &data.shard(c as usize)));
            let mut combine = |l: Partial, r: Partial| SparseLogRegEval.reduce(l, r);
            tree.eval(tree.root(), &mut leaf, &mut combine).unwrap().unwrap()
        };
        let (first, second) = (run(), run());
        assert_eq!(first, second);
        let e = finish_eval(1e-4, &first).unwrap();
        assert_eq!((e.rows, e.accuracy), (400, sequential.accuracy));
        assert!((e.objective - sequential.objective).abs() < 1e-12 * sequential.objective, "{chunks} chunks");
    }
}

#[test]
fn bad_batches_and_weights_are_errors() {
    let (set, keys, weights) = small_batch(6);
    let rows = set.rows_view().unwrap().batch(0..12).unwrap();
    let e = loss_grad(&keys[1..], &weights[1..], &rows, 0.0).unwrap_err();
    assert!(e.to_string().contains("is not among the"), "{e}");
    assert!(matches!(loss_grad(&keys, &weights[1..], &rows, 0.0), Err(MlError::Length { .. })));
    let mut unsorted = keys.clone();
    unsorted.swap(0, 1);
    assert!(loss_grad(&unsorted, &weights, &rows, 0.0).unwrap_err().to_string().contains("sorted"));
    assert!(loss_grad(&keys, &weights, &rows, -1.0).is_err());
    // Too few weights for the evaluation: the chunk's error reaches the master.
    let partial = SparseLogRegEval.map(&vec![0.0; 10], &set.data.shard(0));
    let e = finish_eval(0.0, &partial).unwrap_err();
    assert!(e.to_string().contains("beyond the 10 weights"), "{e}");
    assert!(sgd(&set.rows_view().unwrap(), 10, &SgdConfig::default(), |_, _| {}).is_err());
    let no_batch = SgdConfig { batch: 0, ..SgdConfig::default() };
    assert!(sgd(&set.rows_view().unwrap(), 200, &no_batch, |_, _| {}).is_err());
}

#[test]
fn sgd_learns_the_hidden_weights() {
    let g = SparseGenerator::new(spec(4000, 20_000, 40, 13)).unwrap();
    let train = g.dataset().unwrap();
    let test = SparseGenerator::new(SparseSpec { first_row: 4000, rows: 1000, ..g.spec().clone() })
        .unwrap()
        .dataset()
        .unwrap();
    let (train_rows, test_rows) = (train.rows_view().unwrap(), test.rows_view().unwrap());
    let truth = evaluate(&g.true_weights(), 0.0, &test_rows).unwrap();
    assert!(truth.accuracy > 0.85, "the hidden weights classify {:.3} of the test rows", truth.accuracy);
    let config = SgdConfig { epochs: 3, batch: 50, ..SgdConfig::default() };
    let mut records = Vec::new();
    let weights = sgd(&train_rows, 20_000, &config, |r, _| records.push(*r)).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].updates, 3 * 80);
    assert!(records.windows(2).all(|w| w[1].train.objective < w[0].train.objective), "{records:?}");
    let tested = evaluate(&weights, config.l2, &test_rows).unwrap();
    assert!(records[2].train.objective < 0.3 && tested.accuracy > 0.75, "{records:?} {tested:?}");
    // Deterministic: the same settings give the same weights.
    let again = sgd(&train_rows, 20_000, &config, |_, _| {}).unwrap();
    assert_eq!(weights, again);
}

#[test]
fn the_scaled_gradient_is_the_plain_one_scaled_and_counts_the_rows_classified_right() {
    let (set, keys, weights) = small_batch(8);
    let rows = set.rows_view().unwrap().batch(0..12).unwrap();
    let (loss, plain) = loss_grad(&keys, &weights, &rows, 0.1).unwrap();
    let mut scaled = vec![f32::NAN; keys.len()];
    let fit = loss_grad_into(&keys, &weights, &rows, 0.1, 1.0 / 12.0, &mut scaled).unwrap();
    assert_eq!(fit.loss.to_bits(), loss.to_bits());
    for (s, p) in scaled.iter().zip(&plain) {
        assert!((f64::from(*s) - f64::from(*p) / 12.0).abs() < 1e-6, "{s} vs {p}/12");
    }
    // The count agrees with the evaluation of the same weights as a dense vector.
    let mut dense = vec![0.0f32; 200];
    for (&k, &w) in keys.iter().zip(&weights) {
        dense[k as usize] = w;
    }
    let e = evaluate(&dense, 0.1, &set.rows_view().unwrap()).unwrap();
    assert_eq!(fit.correct as f64 / 12.0, e.accuracy);
    let mut short = vec![0.0f32; keys.len() - 1];
    let err = loss_grad_into(&keys, &weights, &rows, 0.1, 1.0, &mut short).unwrap_err();
    assert!(err.to_string().contains("gradient of the batch's keys"), "{err}");
}
