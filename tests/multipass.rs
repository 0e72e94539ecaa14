//! The multipass worker/aggregator loop over real worker processes: local state persists across passes, the
//! aggregate sees contributions in worker order, and sessions are independent.

mod common;

use cohort::Dataset;
use cohort_cli::jobs::diag::PassProbe;
use common::*;

#[test]
fn local_state_persists_and_aggregation_order_is_fixed() {
    let data = Dataset::new((1..=12).map(f64::from).collect(), 1).unwrap().with_chunks(6).unwrap();
    let mut c = cluster(3);
    let h = c.load(&data).unwrap();
    let session = c.open_session(7);
    let mut state = Vec::new();
    for _ in 0..3 {
        state = c.pass(&PassProbe, &session, &state, &h).unwrap();
    }
    // Each pass appends (index, passes so far, sum of the worker's rows, rows) for workers 0, 1, 2 in order.
    let expected: Vec<f64> = (1..=3)
        .flat_map(|pass| {
            [
                [0.0, pass as f64, 1.0 + 2.0 + 3.0 + 4.0, 4.0],
                [1.0, pass as f64, 5.0 + 6.0 + 7.0 + 8.0, 4.0],
                [2.0, pass as f64, 9.0 + 10.0 + 11.0 + 12.0, 4.0],
            ]
        })
        .flatten()
        .collect();
    assert_eq!(state, expected);

    // A new session starts from fresh local state; closing the old one frees it.
    c.close_session(session).unwrap();
    let fresh = c.open_session(7);
    let state = c.pass(&PassProbe, &fresh, &Vec::new(), &h).unwrap();
    assert_eq!(state[1], 1.0);
}

#[test]
fn a_resumed_session_restores_every_replica_and_refuses_a_damaged_snapshot() {
    let data = Dataset::new((1..=8).map(f64::from).collect(), 1).unwrap().with_chunks(4).unwrap();
    let mut c = cluster(2);
    let h = c.load(&data).unwrap();
    let session = c.open_session(3);
    let mut state = Vec::new();
    for _ in 0..2 {
        state = c.pass(&PassProbe, &session, &state, &h).unwrap();
    }
    let mut snapshot = c.session_snapshot(&session);
    let resumed = c.resume_session(snapshot.clone()).unwrap();
    // The pass counts continue from 2 on both replicas, although the workers' own states are for another session.
    let next = c.pass(&PassProbe, &resumed, &Vec::new(), &h).unwrap();
    assert_eq!(next, vec![0.0, 3.0, 10.0, 4.0, 1.0, 3.0, 26.0, 4.0]);

    snapshot.locals.pop();
    let err = c.resume_session(snapshot).unwrap_err().to_string();
    assert!(err.contains("2 replicas but 1 saved local states"), "{err}");
}

#[test]
fn a_multipass_job_missing_from_the_binary_is_named() {
    struct Missing;
    impl cohort::Multipass for Missing {
        const NAME: &'static str = "tests.missing_pass";
        type Elem = f64;
        type State = f64;
        type Partial = f64;
        type Local = ();
        fn init_local(&self, _: &f64, _: &cohort::ReplicaContext) {}
        fn pass(&self, _: &f64, _: &mut (), _: &[cohort::Shard<'_, f64>]) -> f64 {
            0.0
        }
        fn aggregate(&self, s: &f64, _: Vec<cohort::Contribution<f64>>) -> f64 {
            *s
        }
    }
    let mut c = cluster(1);
    let h = c.load(&Dataset::new(vec![1.0], 1).unwrap()).unwrap();
    let s = c.open_session(1);
    let err = c.pass(&Missing, &s, &0.0, &h).unwrap_err().to_string();
    assert!(err.contains("tests.missing_pass") && err.contains("cohort.pass_probe"), "{err}");
}
