//! The partial result of a cost-and-gradient map: a row count and a flat vector of sums.
//!
//! Every model here is evaluated as one map-reduce round whose per-chunk output is a set of *sums* (losses,
//! gradient pieces, activation totals); `reduce` adds them element-wise, left plus right, and the master turns the
//! totals into cost and gradient. What each position of the vector means is the model's business (see
//! [`crate::sae`] and [`crate::softmax`]).
//!
//! `MapReduce::map` cannot return an error, so a chunk that cannot be computed (rows of the wrong width, a label
//! that is not a class) returns a [`Partial`] carrying the error instead; `reduce` keeps the error of the
//! lowest-numbered failing chunk, and the model's `finish` turns it into an [`MlError::Chunk`] on the master.

use cohort::wire::WireError;
use cohort::Payload;

use crate::error::{MlError, Result};

/// Sums over some rows, or the error that stopped a chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// Number of rows summed over.
    pub count: u64,
    /// The sums; the layout is defined by the model.
    pub sums: Vec<f64>,
    /// The first failure among the chunks summed: chunk index and message. `sums` is empty then.
    pub error: Option<(u32, String)>,
}

impl Partial {
    /// Zero sums of length `len` over no rows.
    pub fn zeros(len: usize) -> Partial {
        Partial { count: 0, sums: vec![0.0; len], error: None }
    }

    /// The partial of a chunk that failed.
    pub fn failed(chunk: u32, error: &MlError) -> Partial {
        Partial { count: 0, sums: Vec::new(), error: Some((chunk, error.to_string())) }
    }

    /// Adds two partials (`left` covers lower chunks): counts and sums element-wise, left plus right. An error on
    /// either side wins, the left one first; sums of different lengths become an error too.
    pub fn merge(mut self, right: Partial) -> Partial {
        if self.error.is_some() {
            return self;
        }
        if right.error.is_some() {
            return right;
        }
        if self.sums.len() != right.sums.len() {
            let message = format!(
                "partial results of different lengths ({} and {}): workers run different model shapes",
                self.sums.len(),
                right.sums.len()
            );
            return Partial { count: 0, sums: Vec::new(), error: Some((u32::MAX, message)) };
        }
        for (a, b) in self.sums.iter_mut().zip(&right.sums) {
            *a += b;
        }
        self.count += right.count;
        self
    }

    /// The partial itself, or its error as [`MlError::Chunk`]; checks that the sums have `len` values.
    pub fn check(&self, len: usize) -> Result<()> {
        if let Some((chunk, message)) = &self.error {
            return Err(MlError::Chunk { chunk: *chunk, message: message.clone() });
        }
        if self.sums.len() != len {
            return Err(MlError::Length {
                what: "partial result",
                expected: len,
                got: self.sums.len(),
                hint: "the partial was computed for a model of another shape",
            });
        }
        Ok(())
    }
}

impl Payload for Partial {
    fn encode(&self, out: &mut Vec<u8>) {
        self.count.encode(out);
        self.sums.encode(out);
        self.error.encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        Ok(Partial { count: u64::decode(input)?, sums: Vec::decode(input)?, error: Option::decode(input)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_and_keeps_the_first_error() {
        let a = Partial { count: 2, sums: vec![1.0, 2.0], error: None };
        let b = Partial { count: 3, sums: vec![0.5, -1.0], error: None };
        assert_eq!(a.clone().merge(b.clone()), Partial { count: 5, sums: vec![1.5, 1.0], error: None });
        let e1 = Partial::failed(1, &MlError::Empty("x"));
        let e2 = Partial::failed(2, &MlError::Empty("y"));
        assert_eq!(e1.clone().merge(e2.clone()).error.unwrap().0, 1);
        assert_eq!(a.clone().merge(e2.clone()).error.unwrap().0, 2);
        assert!(matches!(e1.check(2), Err(MlError::Chunk { chunk: 1, .. })));
        assert!(a.clone().merge(Partial::zeros(3)).error.is_some());
        assert!(a.check(3).is_err() && a.check(2).is_ok());
    }

    #[test]
    fn payload_round_trips() {
        for p in [Partial { count: 7, sums: vec![1.0, -2.5], error: None }, Partial::failed(3, &MlError::Empty("z"))] {
            assert_eq!(Partial::from_bytes(&p.to_bytes()).unwrap(), p);
        }
    }
}
