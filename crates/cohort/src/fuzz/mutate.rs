//! The mutation engine: turns a valid input into a slightly (or badly) broken one.
//!
//! Byte-level operations (bit flips, byte sets, insertions, deletions, truncations, splices with other inputs,
//! duplicated ranges) plus integer-aware ones: interesting values (0, 1, the type's maximum and its neighbours,
//! powers of two and the target's own limits) written little- or big-endian at a random offset, small arithmetic on
//! an integer in place, and *length-field tweaks* on the fields a target knows hold a length or a dimension. A target
//! may add a dictionary of tokens (`NaN`, `'shape'`, `qid:`, ...) that are inserted or written over the input.

use crate::rng::Rng;

/// An integer field of an input that holds a length, a count or a dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IntField {
    /// Byte offset.
    pub offset: usize,
    /// Width in bytes: 1, 2, 4 or 8.
    pub width: usize,
    /// Byte order.
    pub big_endian: bool,
}

/// What a target tells the engine about its inputs.
#[derive(Debug, Default, Clone)]
pub(crate) struct Hints {
    /// Tokens worth inserting.
    pub dictionary: Vec<Vec<u8>>,
    /// Integers worth writing (limits of the target and their neighbours).
    pub interesting: Vec<u64>,
}

/// Values that break integer handling in general.
const GENERIC: [u64; 16] =
    [0, 1, 2, 3, 7, 8, 16, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 0x1_0000_0000];

/// A seeded mutator.
pub(crate) struct Mutator {
    pub rng: Rng,
    /// Inputs never grow beyond this many bytes.
    pub max_len: usize,
}

impl Mutator {
    /// A mutator whose choices are all drawn from `seed`.
    pub fn new(seed: u64, max_len: usize) -> Mutator {
        Mutator { rng: Rng::new(seed), max_len }
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.below(n as u64) as usize
        }
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// Random bytes, `len` of them.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.rng.next_u64() as u8).collect()
    }

    /// An interesting value: a generic one, one of the target's, or a neighbour of either.
    pub fn interesting(&mut self, hints: &Hints, width: usize) -> u64 {
        let max = if width >= 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
        let base = match self.below(6) {
            0 => max,
            1 => max / 2,
            2 => 1u64 << self.below(8 * width.min(8)),
            3 if !hints.interesting.is_empty() => hints.interesting[self.below(hints.interesting.len())],
            _ => GENERIC[self.below(GENERIC.len())],
        };
        let v = match self.below(4) {
            0 => base.wrapping_add(1),
            1 => base.wrapping_sub(1),
            _ => base,
        };
        v & max
    }

    /// Applies a stack of 1 to 8 random operations (fewer more often).
    pub fn mutate(&mut self, data: &mut Vec<u8>, others: &[Vec<u8>], fields: &[IntField], hints: &Hints) {
        let mut n = 1;
        while n < 8 && self.one_in(2) {
            n += 1;
        }
        for _ in 0..n {
            self.once(data, others, fields, hints);
        }
        data.truncate(self.max_len);
    }

    /// Applies one random operation.
    pub fn once(&mut self, data: &mut Vec<u8>, others: &[Vec<u8>], fields: &[IntField], hints: &Hints) {
        let len = data.len();
        match self.below(14) {
            // Flip one bit.
            0 if len > 0 => {
                let i = self.below(len);
                data[i] ^= 1 << self.below(8);
            }
            // Set one byte to a random or a special value.
            1 if len > 0 => {
                let i = self.below(len);
                data[i] = match self.below(3) {
                    0 => self.rng.next_u64() as u8,
                    _ => [0u8, 1, 0x7f, 0x80, 0xff, b'0', b'9', b' ', b'\n', b'-', b'.', b'e'][self.below(12)],
                };
            }
            // Insert random bytes or a run of one byte.
            2 => {
                let at = self.below(len + 1);
                let most = if self.one_in(4) { 256 } else { 16 };
                let count = 1 + self.below(most);
                let fill = if self.one_in(2) { self.bytes(count) } else { vec![self.rng.next_u64() as u8; count] };
                data.splice(at..at, fill);
            }
            // Delete a range.
            3 if len > 0 => {
                let at = self.below(len);
                let most = if self.one_in(4) { len } else { 16 };
                let count = 1 + self.below((len - at).min(most));
                data.drain(at..at + count);
            }
            // Cut the end off.
            4 if len > 0 => data.truncate(self.below(len)),
            // Insert or write a piece of another input.
            5 if !others.is_empty() => {
                let other = &others[self.below(others.len())];
                if !other.is_empty() {
                    let from = self.below(other.len());
                    let count = 1 + self.below(other.len() - from);
                    let piece = other[from..from + count].to_vec();
                    let at = self.below(len + 1);
                    if self.one_in(2) {
                        data.splice(at..at, piece);
                    } else {
                        let end = (at + piece.len()).min(len);
                        data.splice(at..end, piece);
                    }
                }
            }
            // Cross over: our head, another input's tail.
            6 if !others.is_empty() => {
                let other = &others[self.below(others.len())];
                let cut = self.below(len + 1);
                let from = self.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            // Write an interesting integer at a random offset.
            7 if len > 0 => {
                let width = [1, 2, 4, 8][self.below(4)];
                let at = self.below(len);
                let value = self.interesting(hints, width);
                let big_endian = self.one_in(2);
                write_int(data, IntField { offset: at, width, big_endian }, value);
            }
            // Add or subtract a little from an integer in place.
            8 if len > 0 => {
                let width = [1, 2, 4, 8][self.below(4)];
                let field = IntField { offset: self.below(len), width, big_endian: self.one_in(2) };
                let delta = 1 + self.below(35) as u64;
                let v = read_int(data, field);
                write_int(data, field, if self.one_in(2) { v.wrapping_add(delta) } else { v.wrapping_sub(delta) });
            }
            // Insert or write a dictionary token.
            9 if !hints.dictionary.is_empty() => {
                let token = hints.dictionary[self.below(hints.dictionary.len())].clone();
                let at = self.below(len + 1);
                if self.one_in(2) {
                    data.splice(at..at, token);
                } else {
                    let end = (at + token.len()).min(len);
                    data.splice(at..end, token);
                }
            }
            // Tweak a known length field.
            10 | 11 if !fields.is_empty() => {
                let field = fields[self.below(fields.len())];
                let current = read_int(data, field);
                let value = match self.below(4) {
                    0 => current.wrapping_add(1 + self.below(4) as u64),
                    1 => current.wrapping_sub(1 + self.below(4) as u64),
                    _ => self.interesting(hints, field.width),
                };
                write_int(data, field, value);
            }
            // Copy a range of the input elsewhere in it.
            12 if len > 0 => {
                let from = self.below(len);
                let count = 1 + self.below((len - from).min(64));
                let piece = data[from..from + count].to_vec();
                let at = self.below(len + 1);
                data.splice(at..at, piece);
            }
            // Swap two bytes.
            13 if len > 1 => {
                let (a, b) = (self.below(len), self.below(len));
                data.swap(a, b);
            }
            // The chosen operation does not apply (empty input, no dictionary, ...): insert a byte instead.
            _ => {
                let at = self.below(len + 1);
                let byte = self.rng.next_u64() as u8;
                data.insert(at, byte);
            }
        }
    }
}

/// Reads an integer field (missing bytes read as 0).
pub(crate) fn read_int(data: &[u8], f: IntField) -> u64 {
    let mut v = 0u64;
    for k in 0..f.width {
        let b = u64::from(data.get(f.offset + k).copied().unwrap_or(0));
        let shift = if f.big_endian { 8 * (f.width - 1 - k) } else { 8 * k };
        v |= b << shift;
    }
    v
}

/// Writes an integer field; bytes beyond the end of `data` are dropped.
pub(crate) fn write_int(data: &mut [u8], f: IntField, v: u64) {
    for k in 0..f.width {
        let shift = if f.big_endian { 8 * (f.width - 1 - k) } else { 8 * k };
        if let Some(b) = data.get_mut(f.offset + k) {
            *b = (v >> shift) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_fields_round_trip_both_byte_orders() {
        let mut data = vec![0u8; 10];
        for big_endian in [false, true] {
            for width in [1, 2, 4, 8] {
                let f = IntField { offset: 1, width, big_endian };
                let v = 0x0102_0304_0506_0708u64 & if width == 8 { u64::MAX } else { (1 << (8 * width)) - 1 };
                write_int(&mut data, f, v);
                assert_eq!(read_int(&data, f), v);
            }
        }
        write_int(&mut data, IntField { offset: 0, width: 4, big_endian: true }, 0x0a0b_0c0d);
        assert_eq!(&data[..4], &[0x0a, 0x0b, 0x0c, 0x0d]);
    }

    #[test]
    fn mutations_are_seeded_and_bounded() {
        let seed = b"hello, fuzzing world".to_vec();
        let hints = Hints { dictionary: vec![b"NaN".to_vec()], interesting: vec![65536] };
        let fields = [IntField { offset: 0, width: 4, big_endian: false }];
        let run = |s| {
            let mut m = Mutator::new(s, 64);
            (0..200)
                .map(|_| {
                    let mut d = seed.clone();
                    m.mutate(&mut d, std::slice::from_ref(&seed), &fields, &hints);
                    d
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(1), run(1));
        assert_eq!(a, b, "same seed, same mutations");
        assert!(a.iter().all(|d| d.len() <= 64));
        assert!(a.iter().filter(|d| **d != seed).count() > 150, "most inputs change");
        assert_ne!(a, run(2));
    }
}
