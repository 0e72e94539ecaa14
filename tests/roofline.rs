//! `cohort bench roofline --quick`: the machine probes and every map's figures come out, as a table and as JSON.

mod common;

use common::*;

#[test]
fn roofline_quick_prints_every_map_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("roofline.json");
    let out = run_cohort(&[
        "bench",
        "roofline",
        "--quick",
        "--workers",
        "1,2",
        "--rounds",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in
        ["Peak: fused multiply-adds", "Memory read bandwidth", "sae 64-25-64", "softmax", "forward+backward", "epoch"]
    {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["quick"], true);
    let peaks = r["peaks"].as_array().unwrap();
    let gemm = peaks.iter().filter(|p| p["kind"] == "gemm").count();
    assert_eq!(gemm, 4, "f32 and f64, one thread and all cores");
    // The FMA probe runs where the CPU has AVX2 and FMA, for the same four cases.
    assert!(peaks.len() == 4 || peaks.len() == 8, "{peaks:?}");
    assert!(peaks.iter().all(|p| p["gflops"].as_f64().unwrap() > 0.0));
    let maps = r["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 5);
    for m in maps {
        assert!(m["flops"].as_f64().unwrap() > 0.0 && m["bytes"].as_f64().unwrap() > 0.0, "{m}");
        assert!(m["gflops"].as_f64().unwrap() > 0.0, "{m}");
        let rounds = m["rounds"].as_array().unwrap();
        assert_eq!(rounds.iter().map(|x| x["workers"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
        for x in rounds {
            // The split is exact by definition; the figures themselves depend on the machine.
            let (round, compute) = (x["round_seconds"].as_f64().unwrap(), x["in_process_seconds"].as_f64().unwrap());
            assert!(round > 0.0 && compute > 0.0);
            assert!((x["overhead_seconds"].as_f64().unwrap() - (round - compute)).abs() < 1e-12);
        }
    }
    // The 1 000-patch autoencoder is cut by cost (4 chunks), not into a fixed 64.
    assert_eq!(maps[1]["chunks"], 4);
    // The framework rows: every worker count × 4 and 64 chunks × three partial sizes.
    let framework = r["framework"].as_array().unwrap();
    assert_eq!(framework.len(), 2 * 2 * 3);
    assert!(framework.iter().all(|x| x["round_seconds"].as_f64().unwrap() > 0.0));
    assert!(stdout.contains("Framework: rounds of a job that only returns a partial"), "{stdout}");
}

#[test]
fn roofline_rejects_bad_worker_counts() {
    fails_with(&["bench", "roofline", "--quick", "--workers", "0"], "positive worker counts");
    fails_with(&["bench", "roofline", "--quick", "--rounds", "0"], "--rounds must be at least 1");
}
