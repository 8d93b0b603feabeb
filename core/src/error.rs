//! The one error type of the engine: every message says what was expected and what was found.

/// Errors from model construction, shapes, data and training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or input had the wrong shape or length.
    #[error("{0}")]
    Shape(String),
    /// A model name, option or hyper-parameter that does not exist or does not fit.
    #[error("{0}")]
    Config(String),
    /// A label outside the model's classes.
    #[error("label {label} at batch position {index} is out of range: the model has {classes} classes")]
    Label { label: u32, index: usize, classes: usize },
    /// Weights that do not fit the network: missing, unexpected or misshapen tensors.
    #[error("{0}")]
    Load(String),
    /// A weight file that cannot be read.
    #[error(transparent)]
    Weights(#[from] crate::io::IoError),
    /// A data set or image that cannot be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Training diverged: the loss, a weight or a batch-norm statistic became
    /// non-finite or exploded (see [`crate::train::trainer::MAX_LOSS`] and
    /// [`crate::train::trainer::MAX_MAGNITUDE`]); `what` says which and its value.
    #[error("training diverged at iteration {iteration}: {what}")]
    Diverged { iteration: u64, what: String },
}

/// Result with the engine's error.
pub type Result<T> = std::result::Result<T, Error>;
