//! The MLP's full-batch loss and gradient as one map-reduce round (`"mlp.cost_grad"`), for L-BFGS — how Spark
//! MLlib's `MultilayerPerceptronClassifier` trains.
//!
//! The optimizer works in `f64`; each chunk converts `θ` to `f32`, runs the forward and backward passes in blocks
//! of [`GRAD_BLOCK`] rows straight from the resident data (no copy), accumulates the chunk's gradient sum in `f32`
//! and returns it widened to `f64` in a [`Partial`] with sums `[Σ loss, Σ ∂loss/∂θ]`. The runtime reduces the
//! partials in its fixed tree, so the cost, the gradient and therefore the trained model are bit-identical for any
//! number of workers. [`FullBatch::finish`] divides by the row count and adds the L2 term `(λ/2)‖W‖²` (biases are
//! not decayed).

use std::cell::RefCell;

use cohort::wire::WireError;
use cohort::{MapReduce, Payload, Shard};

use super::{Mlp, Workspace};
use crate::error::{MlError, Result};
use crate::partial::Partial;

/// Rows per block of the gradient: a block's rows (200 kB for 784 inputs) stay in the L2 cache from the forward
/// pass to the weight gradient.
pub const GRAD_BLOCK: usize = 64;

/// The full-batch objective of an MLP with L2 decay `λ`.
#[derive(Debug, Clone, PartialEq)]
pub struct FullBatch {
    /// The network.
    pub mlp: Mlp,
    /// L2 decay on the weights.
    pub lambda: f64,
}

impl FullBatch {
    /// The parameters to broadcast for one evaluation at `theta`.
    pub fn params(&self, theta: &[f64]) -> Result<MlpParams> {
        self.mlp.check_params(theta.len())?;
        Ok(MlpParams { layers: self.mlp.layers().to_vec(), theta: theta.to_vec() })
    }

    /// The partial sums over one shard (what `map` computes).
    pub fn partial(&self, theta: &[f64], shard: &Shard<'_, f32>) -> Result<Partial> {
        self.mlp.check_params(theta.len())?;
        let classes = self.mlp.classes_of(shard)?;
        // A worker maps chunk after chunk: keep the buffers (a few hundred kB) instead of allocating per chunk.
        thread_local! {
            static BUFFERS: RefCell<(Vec<f32>, Vec<f32>, Workspace)> = RefCell::default();
        }
        BUFFERS.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (theta32, grad, ws) = &mut *guard;
            theta32.clear();
            theta32.extend(theta.iter().map(|&v| v as f32));
            grad.clear();
            grad.resize(theta.len(), 0.0);
            let d = self.mlp.inputs();
            let mut loss = 0.0;
            for start in (0..classes.len()).step_by(GRAD_BLOCK) {
                let nb = GRAD_BLOCK.min(classes.len() - start);
                let x = &shard.values[start * d..(start + nb) * d];
                loss += self.mlp.batch_grad(theta32, x, &classes[start..start + nb], ws, grad, 1.0)?.0;
            }
            let mut out = Partial::zeros(0);
            out.count = classes.len() as u64;
            out.sums.reserve(1 + grad.len());
            out.sums.push(loss);
            out.sums.extend(grad.iter().map(|&g| f64::from(g)));
            Ok(out)
        })
    }

    /// Cost and gradient at `theta` from the reduced partial of all chunks.
    pub fn finish(&self, theta: &[f64], partial: &Partial) -> Result<(f64, Vec<f64>)> {
        self.mlp.check_params(theta.len())?;
        partial.check(1 + theta.len())?;
        if partial.count == 0 {
            return Err(MlError::Empty("MLP full-batch gradient"));
        }
        let m = partial.count as f64;
        let mut cost = partial.sums[0] / m;
        let mut grad: Vec<f64> = partial.sums[1..].iter().map(|s| s / m).collect();
        if self.lambda > 0.0 {
            for (l, w) in self.mlp.layers().windows(2).enumerate() {
                let start = self.mlp.offsets[l];
                for i in start..start + w[0] * w[1] {
                    cost += 0.5 * self.lambda * theta[i] * theta[i];
                    grad[i] += self.lambda * theta[i];
                }
            }
        }
        Ok((cost, grad))
    }
}

/// What the master broadcasts per evaluation: the layer widths and `θ` in `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpParams {
    /// Layer widths.
    pub layers: Vec<usize>,
    /// Parameters.
    pub theta: Vec<f64>,
}

impl Payload for MlpParams {
    fn encode(&self, out: &mut Vec<u8>) {
        self.layers.iter().map(|&n| n as u64).collect::<Vec<u64>>().encode(out);
        self.theta.encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        let layers = Vec::<u64>::decode(input)?
            .into_iter()
            .map(|n| usize::try_from(n).map_err(|_| WireError::Malformed(format!("layer width {n} too large"))))
            .collect::<std::result::Result<_, _>>()?;
        Ok(MlpParams { layers, theta: Vec::decode(input)? })
    }
}

/// The full-batch loss-and-gradient round (`"mlp.cost_grad"`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MlpCostGrad;

impl MapReduce for MlpCostGrad {
    const NAME: &'static str = "mlp.cost_grad";
    type Elem = f32;
    type Params = MlpParams;
    type Output = Partial;

    fn map(&self, params: &MlpParams, shard: &Shard<'_, f32>) -> Partial {
        Mlp::new(&params.layers)
            .and_then(|mlp| FullBatch { mlp, lambda: 0.0 }.partial(&params.theta, shard))
            .unwrap_or_else(|e| Partial::failed(shard.chunk, &e))
    }

    fn reduce(&self, left: Partial, right: Partial) -> Partial {
        left.merge(right)
    }
}
