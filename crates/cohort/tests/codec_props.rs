//! Round-trip properties of the wire format: every payload type decodes to the value it was encoded from (and
//! every cut of its encoding fails), and every message, framed with any payload, reads back as the same frame.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use cohort::wire::frame::{read_frame, write_frame, MAX_FRAME};
use cohort::wire::{ChunkMeta, ElemType, FileFormat, FileSource, Message, Payload, PsRange, Serde, WorkerFailure};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// Encodes, decodes and compares bit for bit (through `Debug`, which tells NaN payloads apart only by value but
/// keeps -0.0 and NaN visible; the bytes are compared too). Every strict prefix must fail to decode.
fn round_trip<T: Payload + std::fmt::Debug>(value: &T) -> Result<(), TestCaseError> {
    let bytes = value.to_bytes();
    let back = T::from_bytes(&bytes).map_err(|e| TestCaseError::fail(format!("{value:?} does not decode: {e}")))?;
    prop_assert_eq!(back.to_bytes(), bytes.clone());
    prop_assert_eq!(format!("{back:?}"), format!("{value:?}"));
    // Cutting anywhere (a few places for long encodings) fails; so does a trailing byte.
    let step = (bytes.len() / 16).max(1);
    for cut in (0..bytes.len()).step_by(step) {
        prop_assert!(T::from_bytes(&bytes[..cut]).is_err(), "a {cut}-byte prefix of {value:?} decoded");
    }
    let mut longer = bytes;
    longer.push(0);
    prop_assert!(T::from_bytes(&longer).is_err());
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    values: Vec<f32>,
    table: BTreeMap<u32, Option<f64>>,
    flag: bool,
}

fn record() -> impl Strategy<Value = Record> {
    (
        ".{0,12}",
        prop::collection::vec(any::<f32>(), 0..8),
        prop::collection::btree_map(any::<u32>(), any::<Option<f64>>(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(name, values, table, flag)| Record { name, values, table, flag })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scalars_round_trip(a in any::<f32>(), b in any::<f64>(), c in any::<u8>(), d in any::<u16>(), e in any::<u32>(),
                          f in any::<u64>(), g in any::<i32>(), h in any::<i64>(), i in any::<bool>()) {
        round_trip(&a)?; round_trip(&b)?; round_trip(&c)?; round_trip(&d)?; round_trip(&e)?;
        round_trip(&f)?; round_trip(&g)?; round_trip(&h)?; round_trip(&i)?; round_trip(&())?;
    }

    #[test]
    fn tensors_round_trip_as_raw_little_endian(v32 in prop::collection::vec(any::<f32>(), 0..300),
                                               v64 in prop::collection::vec(any::<f64>(), 0..300),
                                               vu8 in prop::collection::vec(any::<u8>(), 0..300),
                                               vi64 in prop::collection::vec(any::<i64>(), 0..50),
                                               vu32 in prop::collection::vec(any::<u32>(), 0..50)) {
        round_trip(&v32)?; round_trip(&v64)?; round_trip(&vu8)?; round_trip(&vi64)?; round_trip(&vu32)?;
        // Length, then the values' own little-endian bytes: nothing else.
        let bytes = v64.to_bytes();
        prop_assert_eq!(&bytes[..8], &(v64.len() as u64).to_le_bytes());
        prop_assert!(bytes[8..].chunks(8).zip(&v64).all(|(c, v)| c == v.to_le_bytes()));
    }

    #[test]
    fn strings_options_and_tuples_round_trip(s in ".{0,40}", o in any::<Option<Vec<u16>>>(),
                                             t in (any::<u64>(), prop::collection::vec(any::<f64>(), 0..20), ".{0,10}"),
                                             u in (prop::collection::vec(any::<f32>(), 0..20), any::<Option<(u32, bool)>>()),
                                             w in (any::<u8>(), any::<u16>(), prop::collection::vec(any::<i32>(), 0..9), any::<Option<String>>())) {
        round_trip(&s)?; round_trip(&o)?; round_trip(&t)?; round_trip(&u)?; round_trip(&w)?;
        round_trip(&Some(Some(s.clone())))?;
    }

    #[test]
    fn serde_payloads_round_trip(r in record(), pairs in prop::collection::vec((any::<u8>(), ".{0,6}"), 0..6)) {
        round_trip(&Serde(r.clone()))?;
        round_trip(&Serde(pairs))?;
        round_trip(&(Serde(r), vec![1.5f64]))?;
    }

    #[test]
    fn frames_round_trip(message in message(), payload in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut bytes = Vec::new();
        let n = write_frame(&mut bytes, &message, &payload).unwrap();
        prop_assert_eq!(n, bytes.len());
        // Two frames back to back: each reads back whole, then the stream ends cleanly.
        bytes.extend_from_within(..);
        let mut r = bytes.as_slice();
        for _ in 0..2 {
            let frame = read_frame(&mut r, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(format!("{:?}", frame.message), format!("{message:?}"));
            prop_assert_eq!(&frame.payload, &payload);
            prop_assert_eq!(frame.wire_len, n);
        }
        prop_assert!(read_frame(&mut r, MAX_FRAME).unwrap().is_none());
        // Any cut inside a frame is an error, never a panic or a frame.
        let cut = (n / 2).max(1);
        prop_assert!(read_frame(&mut &bytes[..cut], MAX_FRAME).is_err());
    }
}

fn id() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn ranges() -> impl Strategy<Value = Vec<Range<u32>>> {
    prop::collection::vec((any::<u32>(), any::<u32>()).prop_map(|(a, b)| a..b), 0..4)
}

fn elem() -> impl Strategy<Value = ElemType> {
    prop_oneof![Just(ElemType::F32), Just(ElemType::F64)]
}

fn source() -> impl Strategy<Value = FileSource> {
    (prop_oneof![Just(FileFormat::Idx), Just(FileFormat::Npy)], ".{0,20}", prop::option::of(".{0,20}")).prop_map(
        |(format, values, labels)| FileSource {
            format,
            values: PathBuf::from(values),
            labels: labels.map(PathBuf::from),
        },
    )
}

fn failure() -> impl Strategy<Value = WorkerFailure> {
    let s = || ".{0,16}";
    prop_oneof![
        s().prop_map(|job| WorkerFailure::UnknownJob { job }),
        s().prop_map(|dataset| WorkerFailure::NotResident { dataset }),
        (s(), any::<u32>()).prop_map(|(dataset, chunk)| WorkerFailure::MissingChunk { dataset, chunk }),
        (s(), elem(), elem()).prop_map(|(job, job_elem, data_elem)| WorkerFailure::ElemMismatch {
            job,
            job_elem,
            data_elem
        }),
        (s(), s()).prop_map(|(what, detail)| WorkerFailure::Decode { what, detail }),
        s().prop_map(|message| WorkerFailure::Panicked { message }),
        (any::<u32>(), s()).prop_map(|(chunk, detail)| WorkerFailure::BadChunk { chunk, detail }),
        s().prop_map(|detail| WorkerFailure::Load { detail }),
        (any::<u32>(), s()).prop_map(|(replica, detail)| WorkerFailure::Restore { replica, detail }),
        s().prop_map(|kind| WorkerFailure::Unexpected { kind }),
    ]
}

/// Any message, every kind with arbitrary fields.
fn message() -> impl Strategy<Value = Message> {
    let s = || ".{0,24}";
    prop_oneof![
        (any::<[u8; 8]>(), any::<u32>(), id(), id())
            .prop_map(|(magic, version, binary_sha256, nonce)| Message::Hello { magic, version, binary_sha256, nonce }),
        (any::<u32>(), id(), id(), id(), prop::collection::vec(s(), 0..4), any::<u32>(), s()).prop_map(
            |(version, binary_sha256, nonce, proof, jobs, pid, host)| Message::HelloReply {
                version,
                binary_sha256,
                nonce,
                proof,
                jobs,
                pid,
                host
            }
        ),
        (any::<u32>(), id(), any::<u32>()).prop_map(|(worker_id, proof, heartbeat_ms)| Message::Welcome {
            worker_id,
            proof,
            heartbeat_ms
        }),
        s().prop_map(|reason| Message::Reject { reason }),
        (id(), elem(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>(), any::<bool>()).prop_map(
            |(dataset, elem, cols, total_chunks, chunk, first_row, rows, has_labels)| Message::LoadChunk(ChunkMeta {
                dataset,
                elem,
                cols,
                total_chunks,
                chunk,
                first_row,
                rows,
                has_labels
            })
        ),
        (any::<u64>(), id()).prop_map(|(req, dataset)| Message::LoadDone { req, dataset }),
        (any::<u64>(), id(), any::<u32>()).prop_map(|(req, dataset, chunks)| Message::Loaded { req, dataset, chunks }),
        id().prop_map(|dataset| Message::DropDataset { dataset }),
        (id(), ranges()).prop_map(|(dataset, chunks)| Message::DropChunks { dataset, chunks }),
        (any::<u64>(), source()).prop_map(|(req, source)| Message::Describe { req, source }),
        (any::<u64>(), any::<u64>(), any::<u32>(), id())
            .prop_map(|(req, rows, cols, fingerprint)| Message::Described { req, rows, cols, fingerprint }),
        (any::<u64>(), id(), source(), elem(), id(), any::<u64>(), any::<u32>(), ranges()).prop_map(
            |(req, dataset, source, elem, fingerprint, rows, total_chunks, chunks)| Message::LoadSource {
                req,
                dataset,
                source,
                elem,
                fingerprint,
                rows,
                total_chunks,
                chunks
            }
        ),
        (any::<u64>(), s(), id(), ranges()).prop_map(|(req, job, dataset, chunks)| Message::Map {
            req,
            job,
            dataset,
            chunks
        }),
        (any::<u64>(), prop::collection::vec(any::<(u32, u32)>(), 0..6), any::<bool>(), any::<u64>())
            .prop_map(|(req, nodes, last, compute_us)| Message::MapDone { req, nodes, last, compute_us }),
        (any::<u64>(), any::<u64>(), s(), id(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(req, session, job, dataset, first_chunk, end_chunk, replica, replicas, seed)| Message::Pass {
                req,
                session,
                job,
                dataset,
                first_chunk,
                end_chunk,
                replica,
                replicas,
                seed
            }),
        (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(session, replica, saved)| Message::RestoreLocal {
            session,
            replica,
            saved
        }),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<bool>(), any::<u64>()).prop_map(
            |(req, replica, partial_len, saved, compute_us)| Message::PassDone {
                req,
                replica,
                partial_len,
                saved,
                compute_us
            }
        ),
        any::<u64>().prop_map(|session| Message::EndSession { session }),
        (any::<u64>(), failure()).prop_map(|(req, failure)| Message::Failed { req, failure }),
        any::<f32>().prop_map(|slowdown| Message::Configure { slowdown }),
        Just(Message::Heartbeat),
        Just(Message::Shutdown),
        ps_message(),
    ]
}

/// The parameter-server control messages, every kind with arbitrary fields.
fn ps_message() -> impl Strategy<Value = Message> {
    let s = || ".{0,24}";
    let range = || (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(range, lo, hi)| PsRange { range, lo, hi });
    prop_oneof![
        (any::<u64>(), any::<u32>(), prop::collection::vec(range(), 0..4), any::<u32>(), s(), s()).prop_map(
            |(run, server, ranges, workers, consistency, rule)| Message::PsServe {
                run,
                server,
                ranges,
                workers,
                consistency,
                rule
            }
        ),
        (any::<u64>(), s(), any::<u16>()).prop_map(|(run, host, port)| Message::PsListening { run, host, port }),
        (
            any::<u64>(),
            prop::collection::vec(prop::collection::vec(any::<u32>(), 0..4), 0..4),
            prop::collection::vec((s(), any::<u16>()), 0..4)
        )
            .prop_map(|(run, chains, addrs)| Message::PsChains { run, chains, addrs }),
        (
            (any::<u64>(), s(), id(), any::<u32>(), ranges(), prop::collection::vec(any::<u64>(), 0..5)),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                proptest::option::of(any::<(u64, f32, u32)>()),
                any::<f32>(),
                any::<u64>()
            )
        )
            .prop_map(
                |(
                    (run, job, dataset, worker, chunks, bounds),
                    (batch, clocks, seed, blocks, jitter, progress_every),
                )| {
                    Message::PsRun {
                        run,
                        job,
                        dataset,
                        worker,
                        chunks,
                        bounds,
                        batch,
                        clocks,
                        seed,
                        blocks,
                        jitter,
                        progress_every,
                    }
                }
            ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<f64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(run, worker, clock, loss_sum, correct, rows, waited_us)| Message::PsProgress {
                run,
                worker,
                clock,
                loss_sum,
                correct,
                rows,
                waited_us
            }
        ),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<(u64, u64, u64, u64)>(), any::<u64>(), any::<u64>()).prop_map(
            |(run, worker, clock, traffic, busy_us, waited_us)| Message::PsDone {
                run,
                worker,
                clock,
                traffic,
                busy_us,
                waited_us
            }
        ),
        (any::<u64>(), any::<u32>()).prop_map(|(run, range)| Message::PsInject { run, range }),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<bool>())
            .prop_map(|(run, range, req, last)| Message::PsFetch { run, range, req, last }),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>())
            .prop_map(|(run, range, req, metrics_len)| Message::PsFetched { run, range, req, metrics_len }),
        any::<u64>().prop_map(|run| Message::PsEnd { run }),
    ]
}

/// Fails to compile when a message kind is added, until [`message`] generates it too.
#[allow(dead_code)]
fn every_kind_is_generated(m: &Message) {
    match m {
        Message::Hello { .. }
        | Message::HelloReply { .. }
        | Message::Welcome { .. }
        | Message::Reject { .. }
        | Message::LoadChunk(_)
        | Message::LoadDone { .. }
        | Message::Loaded { .. }
        | Message::DropDataset { .. }
        | Message::DropChunks { .. }
        | Message::Describe { .. }
        | Message::Described { .. }
        | Message::LoadSource { .. }
        | Message::Map { .. }
        | Message::MapDone { .. }
        | Message::Pass { .. }
        | Message::RestoreLocal { .. }
        | Message::PassDone { .. }
        | Message::EndSession { .. }
        | Message::Failed { .. }
        | Message::Configure { .. }
        | Message::Heartbeat
        | Message::Shutdown
        | Message::PsServe { .. }
        | Message::PsListening { .. }
        | Message::PsChains { .. }
        | Message::PsRun { .. }
        | Message::PsProgress { .. }
        | Message::PsDone { .. }
        | Message::PsInject { .. }
        | Message::PsFetch { .. }
        | Message::PsFetched { .. }
        | Message::PsEnd { .. } => {}
    }
}
