//! The error type of the models and kernels.
//!
//! Every way a caller can hand a model bad input (a parameter vector of the wrong length, a shard whose rows are not
//! the model's width, a label that is not a class index, an empty dataset) is a variant here with a message that
//! names the thing and how to fix it. Nothing in this crate panics on bad input. Optimizer errors live in
//! [`crate::optim::OptimError`] because they wrap the objective's own error type.

/// Errors of the models and kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MlError {
    /// A buffer has the wrong number of values.
    #[error("{what} has {got} values but {expected} are needed; {hint}")]
    Length {
        /// The buffer (e.g. "sparse-autoencoder parameter vector").
        what: &'static str,
        /// Values needed.
        expected: usize,
        /// Values given.
        got: usize,
        /// How to fix it.
        hint: &'static str,
    },
    /// Matrix shapes that do not fit together (a programming error in a kernel call).
    #[error("matrix shapes do not fit: {0}")]
    Shape(String),
    /// Rows of a shard have the wrong width for the model.
    #[error("{model} expects rows of {expected} values but the data has {got} per row; {hint}")]
    Columns {
        /// The model.
        model: &'static str,
        /// Row width the model needs.
        expected: usize,
        /// Row width of the data.
        got: usize,
        /// How to fix it.
        hint: &'static str,
    },
    /// A configuration value out of range.
    #[error("invalid {what}: {detail}")]
    Config {
        /// The setting.
        what: &'static str,
        /// What is wrong and what is allowed.
        detail: String,
    },
    /// A dataset without the labels a supervised model needs.
    #[error("the data has no labels; {model} needs one class index per row (attach them with Dataset::with_labels)")]
    NoLabels {
        /// The model.
        model: &'static str,
    },
    /// A label that is not a class index.
    #[error("label {value} at row {row} is not a class index in 0..{classes}; labels must be whole numbers 0..k-1")]
    Label {
        /// Row in the whole dataset.
        row: u64,
        /// The label, printed.
        value: String,
        /// Number of classes.
        classes: usize,
    },
    /// No rows to compute on.
    #[error("{0} got no rows; give at least one")]
    Empty(&'static str),
    /// A sparse row (see [`crate::sparse`]) that is malformed or does not fit the model.
    #[error("sparse row {row}: {detail}")]
    SparseRow {
        /// Row in the whole dataset.
        row: u64,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// Values that do not make a dataset.
    #[error(transparent)]
    Data(#[from] cohort::DataError),
    /// A map over one chunk failed on a worker; the message travelled back inside the partial result.
    #[error("chunk {chunk} failed: {message}")]
    Chunk {
        /// The first chunk that failed.
        chunk: u32,
        /// The worker's error, printed.
        message: String,
    },
}

/// `Result` with [`MlError`].
pub type Result<T, E = MlError> = std::result::Result<T, E>;
