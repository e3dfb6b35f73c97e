pub mod discretize;
pub mod error;
pub mod hippo;
pub mod scalar;
pub mod ssm;
pub use error::{Error, Result};
pub mod kernel;
pub mod conv;
