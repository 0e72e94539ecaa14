//! The harnesses of the wire and data targets: frames, both sides of the handshake, the payload codec, and the
//! file loaders (which read a scratch file rewritten for every input).

// Seeds name single chunk ranges on purpose.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mutate::{Hints, IntField, Mutator};
use super::{Harness, Outcome};
use crate::data::loaders::{self, CsvOptions, FileSource, LabelColumn, LibsvmOptions};
use crate::rng::Rng;
use crate::wire::frame::{read_frame, write_frame, MAX_FRAME, MAX_HANDSHAKE_FRAME, PREFIX_LEN};
use crate::wire::handshake::{master_handshake, worker_handshake, MasterHandshake, Secret, WorkerIdentity};
use crate::wire::{ChunkMeta, ElemType, Message, Payload, Serde, WorkerFailure, MAGIC, PROTOCOL_VERSION};

// ---------------------------------------------------------------------------------------------------------------
// Frame streams.

/// Encodes one frame.
pub(crate) fn frame(message: &Message, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, message, payload).expect("seed frames encode");
    out
}

/// A frame's header bytes and payload bytes.
pub(crate) type RawFrame = (Vec<u8>, Vec<u8>);

/// Splits a stream into (header, payload) pairs as far as its length prefixes are sound; returns them and the
/// bytes after the last whole frame.
pub(crate) fn split_frames(mut input: &[u8]) -> (Vec<RawFrame>, Vec<u8>) {
    let mut frames = Vec::new();
    while input.len() >= PREFIX_LEN {
        let body = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
        let header = u16::from_le_bytes([input[4], input[5]]) as usize;
        if body < 2 + header || input.len() < 4 + body {
            break;
        }
        frames.push((input[PREFIX_LEN..PREFIX_LEN + header].to_vec(), input[PREFIX_LEN + header..4 + body].to_vec()));
        input = &input[4 + body..];
    }
    (frames, input.to_vec())
}

/// Joins (header, payload) pairs into a stream with correct length prefixes (a header is cut to 65535 bytes).
pub(crate) fn join_frames(frames: &[RawFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for (header, payload) in frames {
        let header = &header[..header.len().min(u16::MAX as usize)];
        out.extend_from_slice(&((2 + header.len() + payload.len()) as u32).to_le_bytes());
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header);
        out.extend_from_slice(payload);
    }
    out
}

/// The length fields of a frame stream: each frame's `body_len` and `header_len`.
pub(crate) fn frame_fields(input: &[u8]) -> Vec<IntField> {
    let mut fields = Vec::new();
    let mut at = 0usize;
    while at + PREFIX_LEN <= input.len() && fields.len() < 64 {
        fields.push(IntField { offset: at, width: 4, big_endian: false });
        fields.push(IntField { offset: at + 4, width: 2, big_endian: false });
        let body = u32::from_le_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]]) as usize;
        at = match at.checked_add(4 + body) {
            Some(next) if body >= 2 => next,
            _ => break,
        };
    }
    fields
}

/// Mutations that know frames: change one frame's header or payload and fix the lengths, or drop, repeat, swap or
/// borrow whole frames; otherwise byte-level mutations of the stream with its length fields as hints.
pub(crate) fn mutate_frames(m: &mut Mutator, input: &mut Vec<u8>, others: &[Vec<u8>], hints: &Hints) {
    let (mut frames, rest) = split_frames(input);
    if frames.is_empty() || m.one_in(3) {
        let fields = frame_fields(input);
        m.mutate(input, others, &fields, hints);
        return;
    }
    let i = m.below(frames.len());
    match m.below(9) {
        0 | 1 => m.mutate(&mut frames[i].0, &[], &[], hints),
        7 | 8 => replace_varint(m, &mut frames[i].0, hints),
        2 | 3 => {
            let pieces: Vec<Vec<u8>> = frames.iter().map(|f| f.1.clone()).collect();
            m.mutate(&mut frames[i].1, &pieces, &[], hints)
        }
        4 => {
            frames.remove(i);
        }
        5 => {
            let j = m.below(frames.len());
            if m.one_in(2) {
                frames.swap(i, j);
            } else {
                let copy = frames[i].clone();
                frames.insert(j, copy);
            }
        }
        _ => {
            if let Some(other) = others.get(m.below(others.len())) {
                let (theirs, _) = split_frames(other);
                if !theirs.is_empty() {
                    let f = theirs[m.below(theirs.len())].clone();
                    let at = m.below(frames.len() + 1);
                    frames.insert(at, f);
                }
            }
        }
    }
    *input = join_frames(&frames);
    if m.one_in(8) {
        input.extend_from_slice(&rest);
    }
}

/// Replaces the postcard varint that starts at a random offset of a header by an interesting value: when the offset
/// is a field's start, one count, index or length of a message becomes extreme while the rest still decodes.
fn replace_varint(m: &mut Mutator, header: &mut Vec<u8>, hints: &Hints) {
    let at = m.below(header.len());
    let mut end = at;
    while end < header.len() && header[end] & 0x80 != 0 && end - at < 9 {
        end += 1;
    }
    let end = (end + 1).min(header.len());
    let width = [1, 2, 4, 8][m.below(4)];
    let mut v = m.interesting(hints, width);
    let mut encoded = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            encoded.push(byte);
            break;
        }
        encoded.push(byte | 0x80);
    }
    header.splice(at..end, encoded);
}

/// Postcard varints of values that sit at the edges of the protocol's integers, and the frame limits.
pub(crate) fn frame_hints() -> Hints {
    let varints: [&[u8]; 10] = [
        &[0x00],
        &[0x01],
        &[0x7f],
        &[0x80, 0x01],
        &[0xff, 0x7f],
        &[0xff, 0xff, 0x03],
        &[0x80, 0x80, 0x80, 0x80, 0x04],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ];
    let limits = [MAX_HANDSHAKE_FRAME, MAX_FRAME];
    let mut interesting: Vec<u64> = limits.iter().flat_map(|&l| [l as u64 - 1, l as u64, l as u64 + 1]).collect();
    interesting.extend([2, 5, 6, 0xffff, PROTOCOL_VERSION as u64]);
    Hints { dictionary: varints.iter().map(|v| v.to_vec()).collect(), interesting }
}

/// A message's postcard bytes.
fn header_bytes(message: &Message) -> Vec<u8> {
    postcard::to_allocvec(message).expect("messages encode")
}

/// `read_frame` over a whole stream, with both limits; every decoded frame must encode back to a frame that
/// decodes to the same message and payload.
pub(crate) struct FrameHarness;

impl Harness for FrameHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut seeds = Vec::new();
        let mut all = Vec::new();
        for (message, payload) in sample_messages() {
            let f = frame(&message, &payload);
            all.extend_from_slice(&f);
            seeds.push(f);
        }
        seeds.push(all);
        seeds
    }

    fn hints(&self) -> Hints {
        frame_hints()
    }

    fn mutate(&mut self, m: &mut Mutator, input: &mut Vec<u8>, others: &[Vec<u8>], hints: &Hints) {
        mutate_frames(m, input, others, hints)
    }

    fn exec(&mut self, input: &[u8]) -> Outcome {
        let mut parts = Vec::new();
        for limit in [MAX_HANDSHAKE_FRAME, MAX_FRAME] {
            let mut r = input;
            let mut frames = 0;
            let end = loop {
                match read_frame(&mut r, limit) {
                    Ok(Some(f)) => {
                        frames += 1;
                        let again = frame(&f.message, &f.payload);
                        assert!(again.len() <= f.wire_len, "a decoded frame re-encodes longer than it came");
                        let g = read_frame(&mut again.as_slice(), MAX_FRAME)
                            .expect("a re-encoded frame decodes")
                            .expect("a re-encoded frame is there");
                        assert_eq!(g.payload, f.payload, "payload changed in a re-encoding");
                        assert_eq!(header_bytes(&g.message), header_bytes(&f.message), "message changed");
                    }
                    Ok(None) => break Outcome::accepted(format!("{frames} frames")),
                    Err(e) => break Outcome::rejected(format!("{frames} frames, then {e}")),
                }
            };
            parts.push(end);
        }
        Outcome::all(parts)
    }
}

/// One message of every kind, with a payload where the kind carries one.
pub(crate) fn sample_messages() -> Vec<(Message, Vec<u8>)> {
    let ds = [7u8; 32];
    let meta = ChunkMeta {
        dataset: ds,
        elem: ElemType::F64,
        cols: 2,
        total_chunks: 3,
        chunk: 1,
        first_row: 2,
        rows: 2,
        has_labels: true,
    };
    let chunk: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0, 0.0, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let source = FileSource::idx("/nonexistent/images", Some("/nonexistent/labels".into()));
    vec![
        (Message::Hello { magic: MAGIC, version: PROTOCOL_VERSION, binary_sha256: [1; 32], nonce: [2; 32] }, vec![]),
        (
            Message::HelloReply {
                version: PROTOCOL_VERSION,
                binary_sha256: [1; 32],
                nonce: [3; 32],
                proof: [4; 32],
                jobs: vec!["cohort.noop".into(), "a.b".into()],
                pid: 4242,
                host: "node-1".into(),
            },
            vec![],
        ),
        (Message::Welcome { worker_id: 3, proof: [5; 32], heartbeat_ms: 500 }, vec![]),
        (Message::Reject { reason: "wrong secret".into() }, vec![]),
        (Message::LoadChunk(meta), chunk),
        (Message::LoadDone { req: 9, dataset: ds }, vec![]),
        (Message::Loaded { req: 9, dataset: ds, chunks: 3 }, vec![]),
        (Message::DropDataset { dataset: ds }, vec![]),
        (Message::DropChunks { dataset: ds, chunks: vec![0..1, 2..3] }, vec![]),
        (Message::Describe { req: 10, source: source.clone() }, vec![]),
        (Message::Described { req: 10, rows: 60000, cols: 784, fingerprint: [6; 32] }, vec![]),
        (
            Message::LoadSource {
                req: 11,
                dataset: ds,
                source,
                elem: ElemType::F32,
                fingerprint: [6; 32],
                rows: 60000,
                total_chunks: 64,
                chunks: vec![0..32],
            },
            vec![],
        ),
        (Message::Map { req: 12, job: "cohort.noop".into(), dataset: ds, chunks: vec![0..3] }, vec![1, 2, 3]),
        (Message::MapDone { req: 12, nodes: vec![(4, 8), (5, 8)], last: true, compute_us: 17 }, 1.5f64.to_bytes()),
        (
            Message::Pass {
                req: 13,
                session: 1,
                job: "j".into(),
                dataset: ds,
                first_chunk: 0,
                end_chunk: 2,
                replica: 0,
                replicas: 2,
                seed: 5,
            },
            vec![0.5f64, 1.5].to_bytes(),
        ),
        (Message::RestoreLocal { session: 1, replica: 0, saved: true }, vec![9; 12]),
        (Message::PassDone { req: 13, replica: 0, partial_len: 8, saved: true, compute_us: 1 }, vec![1; 16]),
        (Message::EndSession { session: 1 }, vec![]),
        (
            Message::Failed {
                req: 14,
                failure: WorkerFailure::ElemMismatch {
                    job: "j".into(),
                    job_elem: ElemType::F32,
                    data_elem: ElemType::F64,
                },
            },
            vec![],
        ),
        (
            Message::Failed { req: 15, failure: WorkerFailure::MissingChunk { dataset: "0707".into(), chunk: 2 } },
            vec![],
        ),
        (Message::Configure { slowdown: 2.5 }, vec![]),
        (Message::Heartbeat, vec![]),
        (Message::Shutdown, vec![]),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// The handshake.

const FUZZ_SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn identity() -> WorkerIdentity {
    WorkerIdentity { binary_sha256: [1; 32], jobs: vec!["cohort.noop".into()], pid: 7, host: "fuzz".into() }
}

/// `worker_handshake` reading the master's frames from the input (its answers go nowhere).
pub(crate) struct HandshakeWorkerHarness {
    secret: Secret,
}

impl HandshakeWorkerHarness {
    pub(crate) fn new() -> Self {
        HandshakeWorkerHarness { secret: Secret::from_hex(FUZZ_SECRET).expect("valid hex") }
    }
}

impl Harness for HandshakeWorkerHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let hello = |version, magic| Message::Hello { magic, version, binary_sha256: [1; 32], nonce: [2; 32] };
        let good = frame(&hello(PROTOCOL_VERSION, MAGIC), &[]);
        let welcome = frame(&Message::Welcome { worker_id: 1, proof: [0; 32], heartbeat_ms: 1000 }, &[]);
        vec![
            [good.clone(), welcome.clone()].concat(),
            [good.clone(), frame(&Message::Reject { reason: "binary differs".into() }, &[])].concat(),
            [good.clone(), frame(&Message::Heartbeat, &[])].concat(),
            [good.clone(), welcome, frame(&Message::Shutdown, &[])].concat(),
            frame(&hello(PROTOCOL_VERSION + 1, MAGIC), &[]),
            frame(&hello(PROTOCOL_VERSION, *b"COHORT\x00\x02"), &[]),
            frame(&Message::Heartbeat, &[7; 10]),
            good,
        ]
    }

    fn hints(&self) -> Hints {
        frame_hints()
    }

    fn mutate(&mut self, m: &mut Mutator, input: &mut Vec<u8>, others: &[Vec<u8>], hints: &Hints) {
        mutate_frames(m, input, others, hints)
    }

    fn exec(&mut self, input: &[u8]) -> Outcome {
        let mut r = input;
        let result = worker_handshake(&mut r, &mut std::io::sink(), &self.secret, identity());
        Outcome::of(&result)
    }
}

/// `master_handshake` (and so `MasterHandshake::on_reply`) reading the worker's reply from the input. One
/// `MasterHandshake` serves the whole run, so replies made for its nonce carry a valid proof and the accepting path
/// is reached too.
pub(crate) struct HandshakeMasterHarness {
    master: MasterHandshake,
}

impl HandshakeMasterHarness {
    pub(crate) fn new() -> Self {
        let secret = Secret::from_hex(FUZZ_SECRET).expect("valid hex");
        HandshakeMasterHarness { master: MasterHandshake::new(secret, [1; 32]) }
    }

    /// The reply a real worker with `identity` sends to this master.
    fn reply(&self, identity: WorkerIdentity) -> Vec<u8> {
        let hello = frame(&self.master.hello(), &[]);
        let mut reply = Vec::new();
        let secret = Secret::from_hex(FUZZ_SECRET).expect("valid hex");
        // The worker then waits for a Welcome that is not there: the handshake ends "closed", the reply is written.
        let _ = worker_handshake(&mut hello.as_slice(), &mut reply, &secret, identity);
        reply
    }
}

impl Harness for HandshakeMasterHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let many = WorkerIdentity {
            jobs: (0..40).map(|i| format!("job.number.{i}")).collect(),
            host: "a-rather-long-host-name.example.org".into(),
            ..identity()
        };
        let other_binary = WorkerIdentity { binary_sha256: [9; 32], ..identity() };
        vec![
            self.reply(identity()),
            self.reply(many),
            self.reply(other_binary),
            frame(&Message::Reject { reason: "version mismatch".into() }, &[]),
            frame(&Message::Heartbeat, &[]),
            frame(
                &Message::HelloReply {
                    version: PROTOCOL_VERSION,
                    binary_sha256: [1; 32],
                    nonce: [3; 32],
                    proof: [4; 32],
                    jobs: vec![],
                    pid: 1,
                    host: String::new(),
                },
                &[],
            ),
        ]
    }

    fn hints(&self) -> Hints {
        frame_hints()
    }

    fn mutate(&mut self, m: &mut Mutator, input: &mut Vec<u8>, others: &[Vec<u8>], hints: &Hints) {
        mutate_frames(m, input, others, hints)
    }

    fn exec(&mut self, input: &[u8]) -> Outcome {
        let mut r = input;
        let mut answer = Vec::new();
        let result = master_handshake(&mut r, &mut answer, &self.master, 3);
        // The master wrote its Hello and then at most one well-formed Welcome or Reject.
        let mut written = answer.as_slice();
        let hello = read_frame(&mut written, MAX_HANDSHAKE_FRAME).expect("the master's hello decodes");
        assert!(matches!(hello, Some(Frame { message: Message::Hello { .. }, .. })));
        match read_frame(&mut written, MAX_HANDSHAKE_FRAME).expect("the master's answer decodes") {
            None => assert!(result.is_err(), "accepted without a Welcome"),
            Some(Frame { message: Message::Welcome { .. }, .. }) => assert!(result.is_ok(), "a Welcome for a reject"),
            Some(Frame { message: Message::Reject { .. }, .. }) => assert!(result.is_err(), "a Reject for an accept"),
            Some(other) => panic!("the master answered {}", other.message.kind()),
        }
        assert!(written.is_empty(), "the master wrote more than two frames");
        Outcome::of(&result)
    }
}

use crate::wire::Frame;

// ---------------------------------------------------------------------------------------------------------------
// The payload codec.

/// A structured value for the `Serde` wrapper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    values: Vec<f32>,
    table: BTreeMap<u32, Option<f64>>,
    kind: RecordKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum RecordKind {
    Plain,
    Tagged(u64),
    Pair { a: i16, b: bool },
}

/// `T::from_bytes`; a value that decodes must encode back to the same bytes (`canonical`) or at least to bytes that
/// decode to a value that encodes the same again.
fn decode_check<T: Payload>(bytes: &[u8], canonical: bool) -> bool {
    match T::from_bytes(bytes) {
        Err(_) => false,
        Ok(v) => {
            let again = v.to_bytes();
            if canonical {
                assert!(again == bytes, "{} re-encodes to other bytes", std::any::type_name::<T>());
            } else {
                let w = T::from_bytes(&again).expect("a re-encoded value decodes");
                assert!(w.to_bytes() == again, "{} does not re-encode stably", std::any::type_name::<T>());
            }
            true
        }
    }
}

type Tuple3 = (u64, Vec<f64>, String);
type Tuple2 = (Vec<f32>, Option<(u32, bool)>);
type Tuple4 = (u8, u16, Vec<i64>, Option<String>);

/// Decodes an input as one type; whether it was accepted.
type Check = fn(&[u8]) -> bool;

/// Every payload type decodes the same input.
pub(crate) struct CodecHarness;

impl CodecHarness {
    const CHECKS: [(&'static str, Check); 26] = [
        ("f32", |b| decode_check::<f32>(b, true)),
        ("f64", |b| decode_check::<f64>(b, true)),
        ("u8", |b| decode_check::<u8>(b, true)),
        ("u16", |b| decode_check::<u16>(b, true)),
        ("u32", |b| decode_check::<u32>(b, true)),
        ("u64", |b| decode_check::<u64>(b, true)),
        ("i32", |b| decode_check::<i32>(b, true)),
        ("i64", |b| decode_check::<i64>(b, true)),
        ("bool", |b| decode_check::<bool>(b, true)),
        ("()", |b| decode_check::<()>(b, true)),
        ("String", |b| decode_check::<String>(b, true)),
        ("Vec<f32>", |b| decode_check::<Vec<f32>>(b, true)),
        ("Vec<f64>", |b| decode_check::<Vec<f64>>(b, true)),
        ("Vec<u8>", |b| decode_check::<Vec<u8>>(b, true)),
        ("Vec<u16>", |b| decode_check::<Vec<u16>>(b, true)),
        ("Vec<u32>", |b| decode_check::<Vec<u32>>(b, true)),
        ("Vec<u64>", |b| decode_check::<Vec<u64>>(b, true)),
        ("Vec<i32>", |b| decode_check::<Vec<i32>>(b, true)),
        ("Vec<i64>", |b| decode_check::<Vec<i64>>(b, true)),
        ("Option<Vec<f64>>", |b| decode_check::<Option<Vec<f64>>>(b, true)),
        ("(u64, Vec<f64>, String)", |b| decode_check::<Tuple3>(b, true)),
        ("(Vec<f32>, Option<(u32, bool)>)", |b| decode_check::<Tuple2>(b, true)),
        ("(u8, u16, Vec<i64>, Option<String>)", |b| decode_check::<Tuple4>(b, true)),
        ("Serde<Vec<(u8, String)>>", |b| decode_check::<Serde<Vec<(u8, String)>>>(b, false)),
        ("Serde<Record>", |b| decode_check::<Serde<Record>>(b, false)),
        ("Serde<Message>", |b| decode_check::<Serde<Message>>(b, false)),
    ];
}

impl Harness for CodecHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(1);
        let mut floats = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f64>>();
        let record = Record {
            name: "weights".into(),
            values: vec![1.0, -0.5, f32::MIN_POSITIVE],
            table: [(1, Some(2.5)), (7, None)].into_iter().collect(),
            kind: RecordKind::Pair { a: -3, b: true },
        };
        vec![
            1.5f32.to_bytes(),
            (-2.25f64).to_bytes(),
            u64::MAX.to_bytes(),
            true.to_bytes(),
            String::from("héllo, wörld").to_bytes(),
            vec![1.0f32, f32::NAN, -0.0, f32::INFINITY].to_bytes(),
            floats(9).to_bytes(),
            vec![0u8, 1, 2, 255].to_bytes(),
            vec![u32::MAX, 0, 1].to_bytes(),
            vec![i64::MIN, -1, 0].to_bytes(),
            Some(floats(3)).to_bytes(),
            None::<Vec<f64>>.to_bytes(),
            (7u64, floats(4), String::from("x")).to_bytes(),
            (vec![0.5f32; 3], Some((9u32, false))).to_bytes(),
            (1u8, 2u16, vec![3i64, -4], Some(String::from("tail"))).to_bytes(),
            Serde(vec![(1u8, String::from("a")), (2, String::from("bc"))]).to_bytes(),
            Serde(record).to_bytes(),
            Serde(Message::Map { req: 1, job: "j".into(), dataset: [3; 32], chunks: vec![0..4] }).to_bytes(),
            Vec::new(),
        ]
    }

    fn hints(&self) -> Hints {
        let lengths = [0u64, 1, 2, 3, 4, 8, 1 << 61, u64::MAX / 8, u64::MAX / 4 + 1];
        Hints { dictionary: frame_hints().dictionary, interesting: lengths.to_vec() }
    }

    fn fields(&self, input: &[u8]) -> Vec<IntField> {
        // Vector lengths are u64 LE, often at the start or right after a fixed-size field.
        [0usize, 1, 4, 8, 9, 10]
            .into_iter()
            .filter(|&o| o + 8 <= input.len())
            .map(|offset| IntField { offset, width: 8, big_endian: false })
            .collect()
    }

    fn exec(&mut self, input: &[u8]) -> Outcome {
        let mut accepted = Vec::new();
        for (name, check) in Self::CHECKS {
            if check(input) {
                accepted.push(name);
            }
        }
        if accepted.is_empty() {
            Outcome::rejected("no type")
        } else {
            Outcome::accepted(accepted.join(","))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Data files.

/// Which loaders a [`FileHarness`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Idx,
    Csv,
    Libsvm,
    Npy,
    Ranged,
}

/// Bytes of an IDX file.
pub(crate) fn idx_bytes(ty: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Bytes of a `.npy` file with the given header dict, padded as NumPy pads it.
pub(crate) fn npy_bytes(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    let prefix = if major == 1 { 10 } else { 12 };
    while !(prefix + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn npy_dict(descr: &str, fortran: bool, shape: &str) -> String {
    let fortran = if fortran { "True" } else { "False" };
    format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses at most `max` bytes of a gzip stream; `None` if it is not one.
fn gunzip(bytes: &[u8], max: u64) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).take(max).read_to_end(&mut out).ok()?;
    Some(out)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The valid side files a loader target pairs the input with (written once, never changed).
pub(crate) struct SideFiles {
    /// 3 IDX images of 2×2 pixels.
    pub images: PathBuf,
    /// 3 IDX labels.
    pub labels: PathBuf,
    /// A 3×2 `<f4` array.
    pub values_npy: PathBuf,
    /// 3 `|u1` labels.
    pub labels_npy: PathBuf,
}

impl SideFiles {
    pub(crate) fn write(dir: &Path) -> std::io::Result<SideFiles> {
        let files = SideFiles {
            images: dir.join("images.idx"),
            labels: dir.join("labels.idx"),
            values_npy: dir.join("values.npy"),
            labels_npy: dir.join("labels.npy"),
        };
        std::fs::write(&files.images, idx_bytes(8, &[3, 2, 2], &[0, 64, 128, 255, 1, 2, 3, 4, 9, 8, 7, 6]))?;
        std::fs::write(&files.labels, idx_bytes(8, &[3], &[2, 0, 1]))?;
        let values = f32_bytes(&[0.5, 1.5, -2.0, 3.0, 4.25, 0.0]);
        std::fs::write(&files.values_npy, npy_bytes(1, &npy_dict("<f4", false, "(3, 2)"), &values))?;
        std::fs::write(&files.labels_npy, npy_bytes(1, &npy_dict("|u1", false, "(3,)"), &[1, 0, 2]))?;
        Ok(files)
    }
}

/// A loader target: the input is written to a scratch file, which the loaders read.
pub(crate) struct FileHarness {
    kind: FileKind,
    input: PathBuf,
    /// The input file, kept open: each input is written over the last and the file cut to its length (never
    /// truncated to zero first, which makes some filesystems flush it to disk).
    file: std::fs::File,
    side: SideFiles,
}

impl FileHarness {
    pub(crate) fn new(dir: &Path, kind: FileKind) -> std::io::Result<FileHarness> {
        let input = dir.join("input");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&input)?;
        Ok(FileHarness { kind, input, file, side: SideFiles::write(dir)? })
    }

    fn write_input(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, 0)?;
        self.file.set_len(bytes.len() as u64)
    }

    fn csv_options() -> [CsvOptions; 4] {
        [
            CsvOptions::default(),
            CsvOptions::default().header(true).label(LabelColumn::Name("b".into())),
            CsvOptions::default().delimiter(b';').label(LabelColumn::Last),
            CsvOptions::default().delimiter(b'\t').header(true).label(LabelColumn::Index(1)),
        ]
    }
}

impl Harness for FileHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let raw: Vec<Vec<u8>> = match self.kind {
            FileKind::Idx | FileKind::Ranged => {
                let pixels: Vec<u8> = (0..4 * 3 * 5).map(|i| (i * 13) as u8).collect();
                let mut seeds = vec![
                    idx_bytes(8, &[4, 3, 5], &pixels),
                    idx_bytes(8, &[4], &[1, 2, 3, 9]),
                    idx_bytes(8, &[0, 28, 28], &[]),
                    idx_bytes(8, &[1, 1, 1], &[200]),
                    idx_bytes(0x0d, &[1, 1, 1], &[0; 4]),
                ];
                if self.kind == FileKind::Ranged {
                    seeds.push(npy_bytes(
                        1,
                        &npy_dict("<f8", false, "(3, 2)"),
                        &f64_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                    ));
                    seeds.push(npy_bytes(2, &npy_dict("<i4", false, "(3,)"), &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]));
                    seeds.push(npy_bytes(1, &npy_dict("|u1", false, "(3,)"), &[0, 1, 2]));
                }
                seeds
            }
            FileKind::Csv => [
                "a,b,c\n1,2,0\n3.5,-4e-3,1\n",
                "1,2,3\n4,5,6\n\n7,8,9\r\n",
                "x;y;label\n1;\"2\"; 3\n4;5;6\n",
                "\u{feff}h1\th2\th3\n0.5\t1\t2\n1e10\t-0\t3\n",
                "1,NaN\n2,inf\n",
                "a,b\n1\n1,2,3\n",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
            FileKind::Libsvm => [
                "+1 1:0.5 3:-2 # comment\n-1 qid:3 2:4e-1\n0 1:1 2:2 4:3\r\n",
                "# header comment\n1 8:1\n2 1:1 2:1 3:1 4:1 5:1 6:1 7:1 8:1\n",
                "1 1:1 1:2\n",
                "1\n-1\n",
                "3 2:1e39 5:-0\n",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
            FileKind::Npy => vec![
                npy_bytes(1, &npy_dict("<f4", false, "(3, 2)"), &f32_bytes(&[0.5, 1.5, -2.0, 3.0, 4.25, 0.0])),
                npy_bytes(2, &npy_dict("<f8", false, "(4,)"), &f64_bytes(&[1.0, -1.0, 0.5, 2.0])),
                npy_bytes(
                    3,
                    &npy_dict("<i8", true, "(3,)"),
                    &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
                ),
                npy_bytes(1, &npy_dict("|u1", false, "(3,)"), &[7, 8, 9]),
                npy_bytes(1, &npy_dict("<i4", false, "(2L, 1L)"), &[1, 0, 0, 0, 2, 0, 0, 0]),
                npy_bytes(
                    1,
                    "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), 'extra': {'k': [1, 2]}}",
                    &[0; 8],
                ),
                npy_bytes(1, &npy_dict(">f8", false, "(1,)"), &[0; 8]),
            ],
        };
        let mut seeds = raw.clone();
        seeds.extend(raw.iter().map(|s| gzip(s)));
        // Two gzip members, and a gzip stream followed by junk.
        if let Some(first) = raw.first() {
            let (a, b) = first.split_at(first.len() / 2);
            seeds.push([gzip(a), gzip(b)].concat());
            seeds.push([gzip(first), b"junk".to_vec()].concat());
        }
        seeds
    }

    fn hints(&self) -> Hints {
        let text = |tokens: &[&str]| tokens.iter().map(|t| t.as_bytes().to_vec()).collect::<Vec<_>>();
        let numbers = [
            "0",
            "-0",
            "1e39",
            "1e309",
            "NaN",
            "inf",
            "-inf",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999",
            "0x10",
            "1_000",
            "",
        ];
        let mut dictionary = text(&numbers);
        dictionary.extend(match self.kind {
            FileKind::Csv => text(&[",", ";", "\t", "\"", "\"\"", "\n", "\r\n", "\r", "\u{feff}", " ", "a,b,c\n"]),
            FileKind::Libsvm => text(&[":", "qid:", "#", " ", "\n", "\r", "0:", "1:", "4294967296:1", "268435456:1"]),
            _ => text(&[
                "\u{93}NUMPY",
                "'descr'",
                "'<f4'",
                "'<f8'",
                "'|u1'",
                "'<i8'",
                "'>f8'",
                "'fortran_order'",
                "True",
                "False",
                "'shape'",
                "(",
                ")",
                ",",
                "L",
                "[",
                "{",
                "}",
                "'",
                "\"",
                "(4294967296, 4294967296)",
                "(18446744073709551615,)",
                "()",
                "(1, 2, 3)",
            ]),
        });
        dictionary.push(vec![0x1f, 0x8b, 0x08, 0x00]);
        let interesting =
            vec![0, 1, 2, 3, 255, 256, 0xffff, 1 << 20, (1 << 20) + 1, 60000, 784, 1 << 31, u32::MAX as u64];
        Hints { dictionary, interesting }
    }

    fn fields(&self, input: &[u8]) -> Vec<IntField> {
        let mut fields = Vec::new();
        if input.starts_with(&[0, 0]) && input.len() >= 4 {
            // IDX: magic, then one big-endian u32 per dimension.
            fields.push(IntField { offset: 2, width: 1, big_endian: true });
            fields.push(IntField { offset: 3, width: 1, big_endian: true });
            for d in 0..usize::from(input[3].min(4)) {
                fields.push(IntField { offset: 4 + 4 * d, width: 4, big_endian: true });
            }
        }
        if input.starts_with(b"\x93NUMPY") {
            fields.push(IntField { offset: 6, width: 1, big_endian: false });
            fields.push(IntField { offset: 8, width: if input.get(6) == Some(&1) { 2 } else { 4 }, big_endian: false });
        }
        fields
    }

    fn mutate(&mut self, m: &mut Mutator, input: &mut Vec<u8>, others: &[Vec<u8>], hints: &Hints) {
        // Mutate what is inside a gzip stream, then compress it again, half the time.
        if is_gzip(input) && m.one_in(2) {
            if let Some(mut inner) = gunzip(input, 1 << 20) {
                let fields = self.fields(&inner);
                m.mutate(&mut inner, others, &fields, hints);
                *input = gzip(&inner);
                return;
            }
        }
        let fields = self.fields(input);
        m.mutate(input, others, &fields, hints);
        if !is_gzip(input) && m.one_in(6) {
            *input = gzip(input);
        }
    }

    fn exec(&mut self, input: &[u8]) -> Outcome {
        if let Err(e) = self.write_input(input) {
            return Outcome::rejected(format!("cannot write the scratch file: {e}"));
        }
        let p = self.input.as_path();
        let side = &self.side;
        match self.kind {
            FileKind::Idx => {
                let images = loaders::load_idx_images(p);
                let labels = loaders::load_idx_labels(p);
                let with_labels = loaders::load_idx::<f32>(p, Some(&side.labels));
                let as_labels = loaders::load_idx::<f64>(&side.images, Some(p));
                if let (Ok(i), Ok(d)) = (&images, &with_labels) {
                    assert_eq!(i.pixels.len(), d.values().len(), "load_idx and load_idx_images disagree");
                }
                Outcome::all(vec![
                    Outcome::of(&images),
                    Outcome::of(&labels),
                    Outcome::of(&with_labels),
                    Outcome::of(&as_labels),
                ])
            }
            FileKind::Csv => {
                let o = Self::csv_options();
                Outcome::all(vec![
                    Outcome::of(&loaders::load_csv::<f32>(p, &o[0])),
                    Outcome::of(&loaders::load_csv::<f64>(p, &o[1])),
                    Outcome::of(&loaders::load_csv::<f32>(p, &o[2])),
                    Outcome::of(&loaders::load_csv::<f64>(p, &o[3])),
                ])
            }
            FileKind::Libsvm => {
                let bounded = LibsvmOptions::default().max_values(1 << 20);
                Outcome::all(vec![
                    Outcome::of(&loaders::load_libsvm::<f32>(p, &bounded)),
                    Outcome::of(&loaders::load_libsvm::<f64>(p, &bounded.clone().features(8))),
                ])
            }
            FileKind::Npy => {
                let array = loaders::load_npy_array::<f32>(p);
                let values = loaders::load_npy::<f64>(p, None);
                let labels = loaders::load_npy::<f32>(&side.values_npy, Some(p));
                Outcome::all(vec![Outcome::of(&array), Outcome::of(&values), Outcome::of(&labels)])
            }
            FileKind::Ranged => {
                let input = p.to_path_buf();
                let sources = [
                    FileSource::idx(&input, None),
                    FileSource::idx(&input, Some(side.labels.clone())),
                    FileSource::idx(&side.images, Some(input.clone())),
                    FileSource::npy(&input, None),
                    FileSource::npy(&side.values_npy, Some(input.clone())),
                    FileSource::npy(&input, Some(side.labels_npy.clone())),
                ];
                let mut parts = Vec::new();
                for (k, source) in sources.iter().enumerate() {
                    parts.push(ranged(source, k % 2 == 0));
                }
                Outcome::all(parts)
            }
        }
    }
}

/// `describe`, then `read_rows` of the whole source, its second half, its first row and a range past its end.
fn ranged(source: &FileSource, as_f32: bool) -> Outcome {
    let info = match loaders::describe(source) {
        Ok(info) => info,
        Err(e) => return Outcome::rejected(e.to_string()),
    };
    let rows = info.rows;
    let ranges = [0..rows, rows / 2..rows, 0..rows.min(1), rows..rows.saturating_add(1)];
    let mut parts = vec![Outcome::accepted("described")];
    for range in ranges {
        let result = if as_f32 {
            loaders::read_rows::<f32>(source, range.clone()).map(|(v, l)| (v.len(), l.map(|l| l.len())))
        } else {
            loaders::read_rows::<f64>(source, range.clone()).map(|(v, l)| (v.len(), l.map(|l| l.len())))
        };
        if let Ok((values, labels)) = &result {
            assert_eq!(*values, range.len() * info.cols, "read_rows returned another shape than describe");
            assert_eq!(labels.is_some(), info.has_labels);
        }
        parts.push(Outcome::of(&result));
    }
    Outcome::all(parts)
}
