//! Workers that read their own chunks from files they can see (a shared filesystem): the master sends no data, and
//! the result is bit-identical to shipping the same data from the master.

mod common;

use std::path::Path;

use cohort::data::loaders::FileSource;
use cohort::rng::Rng;
use cohort::Dataset;
use cohort_cli::jobs::diag::Sum;
use common::sshd::{unavailable, Sshd};
use common::*;

fn write_npy(path: &Path, rows: usize, cols: usize, values: &[f64]) {
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}").into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&header);
    values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

fn awkward(n: usize) -> Vec<f64> {
    let mut rng = Rng::new(5);
    (0..n).map(|_| rng.normal() * 10f64.powi(rng.below(10) as i32 - 5)).collect()
}

#[test]
fn workers_load_their_own_chunks_and_the_master_sends_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let values = awkward(3000 * 3);
    write_npy(&path, 3000, 3, &values);
    let in_memory = Dataset::new(values, 3).unwrap();

    let mut c = cluster(3);
    let before = c.stats().bytes_sent;
    let h = c.load_files::<f64>(&FileSource::npy(&path, None), None).unwrap();
    let load_bytes = c.stats().bytes_sent - before;
    assert_eq!((h.rows(), h.cols(), h.chunks()), (3000, 3, in_memory.chunks()));
    assert!(load_bytes < 4096, "the master sent {load_bytes} bytes to load a 72 kB file");
    let from_files = c.run(&Sum, &(), &h).unwrap();
    let m = c.load(&in_memory).unwrap();
    assert_eq!(from_files.to_bits(), c.run(&Sum, &(), &m).unwrap().to_bits());

    // A file that is not there is named.
    let err = c.load_files::<f64>(&FileSource::npy(dir.path().join("missing.npy"), None), None).unwrap_err();
    assert!(err.to_string().contains("missing.npy"), "{err}");
}

#[test]
fn remote_workers_read_files_at_the_same_path() {
    if let Some(reason) = unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let values = awkward(500 * 2);
    write_npy(&path, 500, 2, &values);
    let mut b = builder(1).workers(cohort::WorkerSpec::parse_list(&format!("local:1,{}", sshd.spec(2))).unwrap());
    for (k, v) in sshd.options() {
        b = b.ssh_option(k, v);
    }
    let mut c = b.start().unwrap();
    let h = c.load_files::<f64>(&FileSource::npy(&path, None), Some(8)).unwrap();
    let expected = Dataset::new(values, 2).unwrap().with_chunks(8).unwrap();
    let m = c.load(&expected).unwrap();
    assert_eq!(c.run(&Sum, &(), &h).unwrap().to_bits(), c.run(&Sum, &(), &m).unwrap().to_bits());
}
