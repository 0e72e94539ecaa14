//! `cohort eval`: measures a saved model on a data set, in this process — accuracy and mean loss for softmax
//! models, the sparse-autoencoder cost on patches cut from the split's images for SAE models.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cohort::data::loaders::{named::FASHION_MNIST, Split};
use cohort_ml::sae::SaeConfig;
use cohort_ml::softmax::SoftmaxConfig;
use serde_json::Value;

use super::named_dataset;
use crate::cli::EvalArgs;
use crate::model_file::{self, ModelHeader, Params};
use crate::patches::{self, PATCH};

/// What `cohort eval` measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// A classifier: fraction of rows classified right, and the mean loss (decay included).
    Accuracy {
        /// Fraction correct.
        accuracy: f64,
        /// Cost at the model.
        cost: f64,
        /// Rows evaluated.
        rows: usize,
    },
    /// A sparse autoencoder: its training cost on fresh patches.
    SaeCost {
        /// Cost at the model.
        cost: f64,
        /// Patches evaluated.
        patches: usize,
    },
}

/// Runs `cohort eval` and prints the result.
pub fn run(args: EvalArgs) -> Result<()> {
    let (header, params) = model_file::load(&args.model)?;
    let split = match args.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => bail!("--split must be `test` or `train`, got {other:?}"),
    };
    let what = format!("{} {} split", args.dataset, args.split);
    match evaluate(&args, &header, &params, split)? {
        Evaluation::Accuracy { accuracy, cost, rows } => {
            println!("{} model {} on {what} ({rows} rows)", header.kind, args.model.display());
            println!("  accuracy          {accuracy:.4}");
            println!("  cost              {cost:.6}");
        }
        Evaluation::SaeCost { cost, patches } => {
            println!("{} model {} on {patches} patches from the {what}", header.kind, args.model.display());
            println!("  cost              {cost:.6}");
        }
    }
    println!("  model sha256      {}", header.sha256);
    Ok(())
}

/// Evaluates a loaded model on `args.dataset`.
pub fn evaluate(args: &EvalArgs, header: &ModelHeader, params: &Params, split: Split) -> Result<Evaluation> {
    let path = &args.model;
    let Params::F64(theta) = params else {
        bail!("{}: a {} model with f32 parameters cannot be evaluated (expected f64)", path.display(), header.kind);
    };
    match header.kind.as_str() {
        "softmax" => {
            let classes = meta_usize(path, header, "classes")?;
            let features = meta_usize(path, header, "features")?;
            let lambda = meta_f64(path, header, "lambda")?;
            let data = named_dataset(&args.dataset, split)?;
            if data.cols() != features {
                bail!(
                    "{} is a softmax model of {features} features; {} rows have {}",
                    path.display(),
                    args.dataset,
                    data.cols()
                );
            }
            let config = SoftmaxConfig::new(classes, features, lambda);
            let accuracy = config.accuracy(theta, &data.as_shard()).with_context(|| format!("{}", path.display()))?;
            let (cost, _) = config.cost_grad(theta, &data.as_shard())?;
            Ok(Evaluation::Accuracy { accuracy, cost, rows: data.rows() })
        }
        "sae" => {
            let visible = meta_usize(path, header, "visible")?;
            let config = SaeConfig {
                visible,
                hidden: meta_usize(path, header, "hidden")?,
                lambda: meta_f64(path, header, "lambda")?,
                rho: meta_f64(path, header, "rho")?,
                beta: meta_f64(path, header, "beta")?,
            };
            if visible != PATCH * PATCH {
                bail!(
                    "{}: a sparse autoencoder of {visible} inputs; cohort eval cuts {PATCH}×{PATCH} patches",
                    path.display()
                );
            }
            if args.dataset != FASHION_MNIST {
                bail!("sae models are evaluated on patches of image data sets; cohort knows: {FASHION_MNIST}");
            }
            let (patches, _) = patches::sample(None, split, args.patches, args.seed)?;
            let (cost, _) = config.cost_grad(theta, &patches).with_context(|| format!("{}", path.display()))?;
            Ok(Evaluation::SaeCost { cost, patches: args.patches })
        }
        other => bail!(
            "{}: a {other:?} model cannot be evaluated on {}; cohort eval knows softmax models (accuracy) and sae \
             models (reconstruction cost on patches)",
            path.display(),
            args.dataset
        ),
    }
}

fn meta<'a>(path: &Path, header: &'a ModelHeader, key: &str) -> Result<&'a Value> {
    header.meta.get(key).with_context(|| {
        format!("{}: the {} model's header lacks {key:?}; the file is corrupt", path.display(), header.kind)
    })
}

fn meta_usize(path: &Path, header: &ModelHeader, key: &str) -> Result<usize> {
    meta(path, header, key)?
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .with_context(|| format!("{}: {key:?} in the model header is not a count", path.display()))
}

fn meta_f64(path: &Path, header: &ModelHeader, key: &str) -> Result<f64> {
    meta(path, header, key)?
        .as_f64()
        .with_context(|| format!("{}: {key:?} in the model header is not a number", path.display()))
}
