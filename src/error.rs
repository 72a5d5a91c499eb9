//! One error type for the library; every message names the problem.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("non-finite value (NaN or Inf) in chain {chain} at annealing step {step} ({stage})")]
    NonFinite {
        step: usize,
        chain: usize,
        stage: &'static str,
    },

    #[error("diverged in chain {chain} at step {step} ({stage}): {what}")]
    Diverged {
        step: usize,
        chain: usize,
        stage: &'static str,
        what: String,
    },

    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    Shape {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("unsupported: {0}")]
    Unsupported(String),

    #[error("{0}")]
    Msg(String),

    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// Fails with [`Error::Shape`] unless `got == expected`.
pub fn expect_shape(what: &str, got: &[usize], expected: &[usize]) -> Result<()> {
    if got != expected {
        return Err(Error::Shape {
            what: what.to_string(),
            expected: expected.to_vec(),
            got: got.to_vec(),
        });
    }
    Ok(())
}
