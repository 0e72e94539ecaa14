//! The jobs compiled into the `cohort` binary. Every process of the binary — master or worker — builds the same
//! [`registry`], so a worker can run any of them by name.

pub mod diag;
pub mod linear;
pub mod ps;

use cohort::Registry;

/// Every job the `cohort` binary can run.
pub fn registry() -> Registry {
    cohort_ml::ps::register(Registry::new())
        .map_reduce(linear::LinearGradient)
        .map_reduce(diag::Sum)
        .map_reduce(diag::Zeros)
        .map_reduce(diag::Fault)
        .map_reduce(diag::Slow)
        .multipass(diag::PassProbe)
        .map_reduce(cohort_ml::mlp::full_batch::MlpCostGrad)
        .multipass(cohort_ml::mlp::jobs::PsgdJob)
        .multipass(cohort_ml::mlp::jobs::BspJob)
        .map_reduce(cohort_ml::sae::SaeJob)
        .map_reduce(cohort_ml::softmax::SoftmaxJob)
        .map_reduce(cohort_ml::sparse::SparseLogRegEval)
        .parameter_server(ps::PsLinear)
        .parameter_server(ps::PsCounter)
}
