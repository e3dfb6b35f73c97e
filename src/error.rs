//! The crate's error type.
//!
//! Every public function that takes user-controlled input returns [`Result`]. The message of each
//! variant names the offending value and what was expected, so that a CLI can print it as one line.
//!
//! | variant | `Display` |
//! |---|---|
//! | [`Error::InvalidArgument`] | `invalid {name} = {value}: expected {expected}` |
//! | [`Error::Shape`] | `wrong shape for {what}: expected {expected}, got {got:?}` |
//! | [`Error::Numerical`] | `numerical failure in {op}: {detail}` |
//! | [`Error::Io`] | `{path}: {source}` (and [`source`](std::error::Error::source) is the I/O error) |
//! | [`Error::Format`] | `{path}: {detail}` |
//! | [`Error::Budget`] | `{what} would take {bytes}, over the memory budget of {budget} ({source})` |
//!
//! # Example
//!
//! ```
//! use s4::error::Error;
//! use s4::ssm::SsmInitConfig;
//!
//! // an odd state size is rejected, and the message names the value and the rule
//! let err = SsmInitConfig { d_state: 7, ..Default::default() }.draw().unwrap_err();
//! assert_eq!(err.to_string(), "invalid d_state N = 7: expected an even integer >= 2 (N/2 conjugate pairs are kept)");
//! match &err {
//!     Error::InvalidArgument { name, value, .. } => assert_eq!((name.as_str(), value.as_str()), ("d_state N", "7")),
//!     other => panic!("unexpected error {other:?}"),
//! }
//!
//! // a missing file is an I/O error naming the path, with the OS error as its source
//! let missing = std::env::temp_dir().join("s4-doc-error-no-such-file.npz");
//! let err = s4::io::NpzIn::open(&missing).unwrap_err();
//! assert!(matches!(err, Error::Io { .. }));
//! assert!(err.to_string().starts_with(&missing.display().to_string()));
//! assert!(std::error::Error::source(&err).is_some());
//!
//! // the shorthands build the same messages for callers' own checks
//! let e = Error::shape("kernel K", "(H, L) = (4, 16)", &[4, 15]);
//! assert_eq!(e.to_string(), "wrong shape for kernel K: expected (H, L) = (4, 16), got [4, 15]");
//! ```

use std::fmt;
use std::path::PathBuf;

/// Errors returned by the public API.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A scalar argument is out of range: `name` had value `value`, but `expected` holds.
    InvalidArgument {
        /// Name of the argument as the user knows it (e.g. `"dt"`, `"d_state N"`).
        name: String,
        /// The value received, formatted.
        value: String,
        /// What was expected (e.g. `"a finite number > 0"`).
        expected: String,
    },
    /// An array has the wrong shape.
    Shape {
        /// Which array (e.g. `"kernel K"`).
        what: String,
        /// Expected shape, in words or numbers (e.g. `"(H, L) = (4, 16)"`).
        expected: String,
        /// The shape received.
        got: Vec<usize>,
    },
    /// A numerical procedure failed or produced non-finite values.
    Numerical {
        /// The operation (e.g. `"hermitian eigensolve"`).
        op: String,
        /// What went wrong.
        detail: String,
    },
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was read but its content is not what was expected (missing array, wrong dtype, ...).
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A piece of work would allocate more than the memory budget ([`crate::budget`]).
    Budget {
        /// The work and the value that sized it (e.g. `"hippo matrices for N = 100000"`).
        what: String,
        /// The bytes it would take (`None`: more than 2^64).
        bytes: Option<u64>,
        /// The budget in force, in bytes.
        budget: u64,
        /// Where the budget came from, in words (e.g. `"set by --max-memory"`).
        source: &'static str,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(name: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> Self {
        Error::InvalidArgument { name: name.into(), value: value.to_string(), expected: expected.into() }
    }

    /// Shorthand for [`Error::Shape`].
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::Shape { what: what.into(), expected: expected.into(), got: got.to_vec() }
    }

    /// Shorthand for [`Error::Numerical`].
    pub fn numerical(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Numerical { op: op.into(), detail: detail.into() }
    }

    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Format { path: path.into(), detail: detail.into() }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { name, value, expected } => {
                write!(f, "invalid {name} = {value}: expected {expected}")
            }
            Error::Shape { what, expected, got } => {
                write!(f, "wrong shape for {what}: expected {expected}, got {got:?}")
            }
            Error::Numerical { op, detail } => write!(f, "numerical failure in {op}: {detail}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, detail } => write!(f, "{}: {detail}", path.display()),
            Error::Budget { what, bytes, budget, source } => {
                match bytes {
                    Some(b) if *b < 1024 => write!(f, "{what} would take {b} B")?,
                    Some(b) => write!(f, "{what} would take {} ({b} bytes)", human_bytes(*b))?,
                    None => write!(f, "{what} would take more than 2^64 bytes")?,
                }
                write!(f, ", over the memory budget of {} ({source})", human_bytes(*budget))
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Formats a byte count for messages in binary units: `1.5 GiB` (powers of 1024, one decimal), or
/// `812 B`; the units `crate::budget::parse_bytes` reads.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Checks that `dt` is finite and strictly positive.
pub(crate) fn check_dt(name: &str, dt: f64) -> Result<()> {
    if dt.is_finite() && dt > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(name, dt, "a finite step size > 0"))
    }
}

/// Checks that a state size N is even and at least 2 (N/2 conjugate pairs are kept).
pub(crate) fn check_even_state(n: usize) -> Result<()> {
    if n >= 2 && n.is_multiple_of(2) {
        Ok(())
    } else {
        Err(Error::invalid("d_state N", n, "an even integer >= 2 (N/2 conjugate pairs are kept)"))
    }
}

/// Checks that a length is at least 1.
pub(crate) fn check_len(name: &str, len: usize) -> Result<()> {
    if len >= 1 {
        Ok(())
    } else {
        Err(Error::invalid(name, len, "a length >= 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_value_and_expectation() {
        let e = Error::invalid("dt", -1.0, "a finite step size > 0");
        assert_eq!(e.to_string(), "invalid dt = -1: expected a finite step size > 0");
        let e = Error::shape("B", "(H, N/2) = (2, 4)", &[2, 3]);
        assert_eq!(e.to_string(), "wrong shape for B: expected (H, N/2) = (2, 4), got [2, 3]");
        assert!(check_dt("dt", f64::NAN).is_err());
        assert!(check_dt("dt", 0.0).is_err());
        assert!(check_dt("dt", 1e-3).is_ok());
        assert!(check_len("L", 0).is_err());
    }
}
