//! The adding problem (Hochreiter & Schmidhuber 1997; in the form of Arjovsky, Shah & Bengio 2016,
//! "Unitary evolution recurrent neural networks").
//!
//! Each sequence has length L and two channels: channel 0 holds values drawn uniformly from
//! [0, 1), channel 1 is a marker that is 1 at exactly two positions, one drawn uniformly from the
//! first half `0..L/2` and one from the second half `L/2..L`, and 0 elsewhere. The target is the
//! sum of the two marked values (regression, `d_output = 1`). Predicting the mean, 1, has MSE
//! Var(U₁ + U₂) = 1/6 ≈ 0.167, the baseline a model must beat.
//!
//! Stored as [`Inputs::Features`] with `d_input = 2`: values `[0, L)` then markers `[L, 2L)`.
//!
//! # Example
//!
//! ```
//! use s4::data::adding::{generate, Config};
//! use s4::data::{Inputs, SplitSizes};
//!
//! let cfg = Config { len: 20 };
//! let task = generate(&cfg, &SplitSizes::new(50, 5, 5), 7)?;
//! assert!(task.regression && task.d_input == 2 && task.d_output == 1);
//! let Inputs::Features { d_input: 2, len: 20, data } = &task.train.inputs else { unreachable!() };
//! let targets = task.train.targets.values().unwrap();
//! for (x, &y) in data.iter().zip(targets) {
//!     let (values, markers) = x.split_at(20);
//!     let marked: Vec<usize> = (0..20).filter(|&t| markers[t] == 1.0).collect();
//!     assert_eq!(marked.len(), 2);
//!     assert!(marked[0] < 10 && marked[1] >= 10); // one marker in each half
//!     assert_eq!(y, values[marked[0]] + values[marked[1]]);
//! }
//! // deterministic in the seed
//! assert_eq!(generate(&cfg, &SplitSizes::new(50, 5, 5), 7)?.train, task.train);
//! assert!(generate(&Config { len: 1 }, &SplitSizes::new(1, 1, 1), 0).is_err());
//! # Ok::<(), s4::Error>(())
//! ```

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

use super::{Inputs, Split, SplitSizes, Targets, TaskData};
use crate::error::{Error, Result};

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Sequence length L (at least 2).
    pub len: usize,
}

impl Default for Config {
    /// L = 1000.
    fn default() -> Self {
        Config { len: 1000 }
    }
}

/// Generates the adding problem (see the module docs): `sizes` sequences per split, each of
/// (d_input, L) = (2, `cfg.len`) values with the sum of the two marked values as target.
/// Deterministic in `seed`.
///
/// # Errors
/// `cfg.len < 2`.
pub fn generate(cfg: &Config, sizes: &SplitSizes, seed: u64) -> Result<TaskData> {
    let l = cfg.len;
    if l < 2 {
        return Err(Error::invalid("adding len", l, "at least 2 (one marker in each half)"));
    }
    sizes.check_memory::<f32>("adding", 2 * l + 1)?;
    let mut rng = Pcg64::seed_from_u64(seed);
    let half = l / 2;
    let mut split = |n: usize| {
        let mut data = Vec::with_capacity(n);
        let mut targets = Vec::with_capacity(n);
        for _ in 0..n {
            let mut x = vec![0f32; 2 * l];
            for v in &mut x[..l] {
                *v = rng.random::<f32>();
            }
            let a = rng.random_range(0..half);
            let b = rng.random_range(half..l);
            x[l + a] = 1.0;
            x[l + b] = 1.0;
            targets.push(x[a] + x[b]);
            data.push(x);
        }
        Split { inputs: Inputs::Features { d_input: 2, len: l, data }, targets: Targets::Values(targets) }
    };
    let train = split(sizes.train);
    let val = split(sizes.val);
    let test = split(sizes.test);
    Ok(TaskData {
        name: "adding".into(),
        train,
        val,
        test,
        vocab_size: None,
        d_input: 2,
        d_output: 1,
        regression: true,
    })
}
