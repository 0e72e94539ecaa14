//! The sparse workload end to end: `cohort gen sparse` writes a libsvm file, the loader reads it into the resident
//! encoding, and the evaluation job (`sparse_logreg.eval`) over real worker processes gives the same bits for 1, 2
//! and 3 workers, equal to the evaluation in this process.

mod common;

use cohort_ml::sparse::{finish_eval, load_libsvm_sparse, sgd, SgdConfig, SparseLoadOptions, SparseLogRegEval};
use common::*;

#[test]
fn generated_file_trains_and_evaluates_the_same_on_1_2_3_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.svm");
    let args = ["gen", "sparse", "--rows", "600", "--features", "50000", "--nnz", "60", "--seed", "5"];
    let out = run_cohort(&[&args[..], &["--out", path.to_str().unwrap()]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("600 rows") && stdout.contains("widest row"), "{stdout}");

    let set = load_libsvm_sparse(&path, &SparseLoadOptions::default().features(50_000)).unwrap();
    let data = set.data.clone().with_chunks(5).unwrap();
    let config = SgdConfig { epochs: 2, batch: 30, ..SgdConfig::default() };
    let mut last = None;
    let weights = sgd(&set.rows_view().unwrap(), set.features, &config, |r, _| last = Some(r.train)).unwrap();
    let sequential = last.unwrap();

    let mut partials = Vec::new();
    for n in 1..=3 {
        let mut cluster = cluster(n);
        let handle = cluster.load(&data).unwrap();
        partials.push(cluster.run(&SparseLogRegEval, &weights, &handle).unwrap());
        cluster.shutdown();
    }
    assert_eq!(partials[0], partials[1]);
    assert_eq!(partials[0], partials[2]);
    let e = finish_eval(config.l2, &partials[0]).unwrap();
    assert_eq!((e.rows, e.accuracy), (600, sequential.accuracy));
    assert!((e.objective - sequential.objective).abs() < 1e-12 * sequential.objective);
    assert!(e.objective < 0.6, "{e:?}");
}

#[test]
fn gen_sparse_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.svm");
    let out = out.to_str().unwrap();
    fails_with(
        &["gen", "sparse", "--rows", "10", "--features", "100", "--nnz", "40", "--out", out],
        "non-zeros per row",
    );
    fails_with(&["gen", "sparse", "--rows", "10", "--features", "100000000", "--out", out], "2^24");
    fails_with(&["gen", "sparse", "--rows", "10", "--values", "dense", "--out", out], "tfidf or binary");
    fails_with(&["gen", "sparse", "--rows", "10", "--out", "/nonexistent/dir/x.svm"], "/nonexistent/dir/x.svm");
}
