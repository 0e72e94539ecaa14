//! A model whose cost and gradient take one map-reduce round ([`RoundModel`]), and the [`Objective`] that runs that
//! round on a cluster ([`ClusterObjective`]): what the full-batch optimizers minimise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cohort::{Cluster, DatasetHandle, MapReduce};

use super::{settings, TrainError};
use crate::error::Result;
use crate::mlp::full_batch::{FullBatch, MlpCostGrad};
use crate::optim::Objective;
use crate::partial::Partial;
use crate::sae::{SaeConfig, SaeJob};
use crate::softmax::{SoftmaxConfig, SoftmaxJob};

/// A model whose cost and gradient at `θ` are one round of a map-reduce job: broadcast [`params`](Self::params),
/// map every chunk, reduce in cohort's fixed tree, [`finish`](Self::finish) on the master.
pub trait RoundModel {
    /// The job every chunk runs.
    type Job: MapReduce;
    /// The job.
    fn job(&self) -> Self::Job;
    /// What to broadcast for an evaluation at `theta`.
    fn params(&self, theta: &[f64]) -> Result<<Self::Job as MapReduce>::Params>;
    /// Cost and gradient from the reduced result.
    fn finish(&self, theta: &[f64], output: &<Self::Job as MapReduce>::Output) -> Result<(f64, Vec<f64>)>;
    /// The model's kind and shape and its hyper-parameters, as printed values (`model` names the kind).
    fn settings(&self) -> BTreeMap<String, String>;
}

impl RoundModel for SoftmaxConfig {
    type Job = SoftmaxJob;
    fn job(&self) -> SoftmaxJob {
        SoftmaxJob
    }
    fn params(&self, theta: &[f64]) -> Result<crate::softmax::SoftmaxParams> {
        SoftmaxConfig::params(self, theta)
    }
    fn finish(&self, theta: &[f64], output: &Partial) -> Result<(f64, Vec<f64>)> {
        SoftmaxConfig::finish(self, theta, output)
    }
    fn settings(&self) -> BTreeMap<String, String> {
        settings([
            ("model", "softmax".into()),
            ("classes", self.classes.to_string()),
            ("features", self.features.to_string()),
            ("lambda", self.lambda.to_string()),
        ])
    }
}

impl RoundModel for SaeConfig {
    type Job = SaeJob;
    fn job(&self) -> SaeJob {
        SaeJob
    }
    fn params(&self, theta: &[f64]) -> Result<crate::sae::SaeParams> {
        SaeConfig::params(self, theta)
    }
    fn finish(&self, theta: &[f64], output: &Partial) -> Result<(f64, Vec<f64>)> {
        SaeConfig::finish(self, theta, output)
    }
    fn settings(&self) -> BTreeMap<String, String> {
        settings([
            ("model", "sae".into()),
            ("visible", self.visible.to_string()),
            ("hidden", self.hidden.to_string()),
            ("lambda", self.lambda.to_string()),
            ("rho", self.rho.to_string()),
            ("beta", self.beta.to_string()),
        ])
    }
}

impl RoundModel for FullBatch {
    type Job = MlpCostGrad;
    fn job(&self) -> MlpCostGrad {
        MlpCostGrad
    }
    fn params(&self, theta: &[f64]) -> Result<crate::mlp::full_batch::MlpParams> {
        FullBatch::params(self, theta)
    }
    fn finish(&self, theta: &[f64], output: &Partial) -> Result<(f64, Vec<f64>)> {
        FullBatch::finish(self, theta, output)
    }
    fn settings(&self) -> BTreeMap<String, String> {
        let layers: Vec<String> = self.mlp.layers().iter().map(|n| n.to_string()).collect();
        settings([("model", "mlp".into()), ("layers", layers.join(",")), ("lambda", self.lambda.to_string())])
    }
}

/// The objective of a [`RoundModel`] over a data set loaded on a cluster: one round per evaluation, timed.
pub struct ClusterObjective<'a, M: RoundModel> {
    cluster: &'a mut Cluster,
    data: &'a DatasetHandle<<M::Job as MapReduce>::Elem>,
    model: &'a M,
    job: M::Job,
    /// Time spent in evaluations (the round and finishing on the master).
    pub evaluating: Duration,
    /// Evaluations made.
    pub evaluations: usize,
}

impl<'a, M: RoundModel> ClusterObjective<'a, M> {
    /// The objective of `model` over `data` on `cluster`.
    pub fn new(
        cluster: &'a mut Cluster,
        data: &'a DatasetHandle<<M::Job as MapReduce>::Elem>,
        model: &'a M,
    ) -> ClusterObjective<'a, M> {
        ClusterObjective { cluster, data, job: model.job(), model, evaluating: Duration::ZERO, evaluations: 0 }
    }
}

impl<M: RoundModel> Objective for ClusterObjective<'_, M> {
    type Error = TrainError;

    fn eval(&mut self, x: &[f64]) -> std::result::Result<(f64, Vec<f64>), TrainError> {
        let started = Instant::now();
        let params = self.model.params(x)?;
        let output = self.cluster.run(&self.job, &params, self.data)?;
        let out = self.model.finish(x, &output)?;
        self.evaluating += started.elapsed();
        self.evaluations += 1;
        Ok(out)
    }
}
