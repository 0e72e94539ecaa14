//! `cohort eval`: measures a saved model (safetensors, or the older cohort format) on a data set, in this
//! process — accuracy and mean loss for softmax and MLP models, the sparse-autoencoder cost on patches cut from the
//! split's images for SAE models.

use anyhow::{bail, Context, Result};
use cohort::data::loaders::{named::FASHION_MNIST, Split};
use cohort_ml::datasets::{self, Scaling};
use cohort_ml::mlp::Mlp;
use cohort_ml::model_file::{self, Model, Params};
use cohort_ml::sae::SaeConfig;
use cohort_ml::softmax::SoftmaxConfig;
use serde_json::Value;

use crate::cli::EvalArgs;
use crate::launch::named_dataset;
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
    let model = model_file::load(&args.model)?;
    let split = match args.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => bail!("--split must be `test` or `train`, got {other:?}"),
    };
    let what = format!("{} {} split", args.dataset, args.split);
    match evaluate(&args, &model, split)? {
        Evaluation::Accuracy { accuracy, cost, rows } => {
            println!("{} model {} on {what} ({rows} rows)", model.kind, args.model.display());
            println!("  accuracy          {accuracy:.4}");
            println!("  cost              {cost:.6}");
        }
        Evaluation::SaeCost { cost, patches } => {
            println!("{} model {} on {patches} patches from the {what}", model.kind, args.model.display());
            println!("  cost              {cost:.6}");
        }
    }
    println!("  model sha256      {}", model.sha256);
    Ok(())
}

/// Evaluates a loaded model on `args.dataset`.
pub fn evaluate(args: &EvalArgs, model: &Model, split: Split) -> Result<Evaluation> {
    let path = args.model.display();
    let count = |key: &str| -> Result<usize> {
        let v = model.architecture.get(key).with_context(|| {
            format!("{path}: the {} model's metadata lacks {key:?}; the file is corrupt", model.kind)
        })?;
        v.as_u64().and_then(|v| usize::try_from(v).ok()).with_context(|| format!("{path}: {key:?} is not a count"))
    };
    let number = |key: &str| -> Result<f64> {
        model
            .architecture
            .get(key)
            .and_then(Value::as_f64)
            .with_context(|| format!("{path}: {key:?} missing or not a number"))
    };
    let rows = |data: cohort::Dataset<f32>| datasets::head(data, args.rows);
    match (model.kind.as_str(), &model.params) {
        ("softmax", Params::F64(theta)) => {
            let (classes, features, lambda) = (count("classes")?, count("features")?, number("lambda")?);
            let data = rows(named_dataset(&args.dataset, split)?)?;
            if data.cols() != features {
                bail!("{path} is a softmax model of {features} features; {} rows have {}", args.dataset, data.cols());
            }
            let config = SoftmaxConfig::new(classes, features, lambda);
            let accuracy = config.accuracy(theta, &data.as_shard()).with_context(|| path.to_string())?;
            let (cost, _) = config.cost_grad(theta, &data.as_shard())?;
            Ok(Evaluation::Accuracy { accuracy, cost, rows: data.rows() })
        }
        ("mlp", Params::F32(theta)) => {
            let layers: Vec<usize> = model.architecture["layers"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as usize).collect())
                .unwrap_or_default();
            let mlp = Mlp::new(&layers).with_context(|| format!("{path}: the layers in its metadata"))?;
            let mut data = rows(named_dataset(&args.dataset, split)?)?;
            let extra = |name: &str| model.extra.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            if let (Some(mean), Some(scale)) = (extra("input.mean"), extra("input.scale")) {
                data = Scaling { mean, scale }.apply(data).with_context(|| path.to_string())?;
            }
            let e = mlp.evaluate(theta, &data.as_shard()).with_context(|| path.to_string())?;
            Ok(Evaluation::Accuracy { accuracy: e.accuracy, cost: e.loss, rows: e.rows })
        }
        ("sae", Params::F64(theta)) => {
            let config = SaeConfig {
                visible: count("visible")?,
                hidden: count("hidden")?,
                lambda: number("lambda")?,
                rho: number("rho")?,
                beta: number("beta")?,
            };
            if config.visible != PATCH * PATCH {
                bail!(
                    "{path}: a sparse autoencoder of {} inputs; cohort eval cuts {PATCH}×{PATCH} patches",
                    config.visible
                );
            }
            if args.dataset != FASHION_MNIST {
                bail!("sae models are evaluated on patches of image data sets; cohort knows: {FASHION_MNIST}");
            }
            let (patches, _) = patches::sample(None, split, args.patches, args.seed)?;
            let (cost, _) = config.cost_grad(theta, &patches).with_context(|| path.to_string())?;
            Ok(Evaluation::SaeCost { cost, patches: args.patches })
        }
        (kind, _) => bail!(
            "{path}: a {kind:?} model cannot be evaluated on {}; cohort eval knows softmax and mlp models (accuracy) \
             and sae models (reconstruction cost on patches)",
            args.dataset
        ),
    }
}
