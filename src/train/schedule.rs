//! Learning-rate schedules: the multiplier of every parameter group's rate at each step, with
//! linear warmup. The official S4 code (and Hugging Face's `get_cosine_schedule_with_warmup`)
//! warms up from 0 and decays to 0; nanoGPT's `get_lr` warms up from 1/(warmup + 1) and decays to
//! a floor.
//!
//! ```
//! use s4::train::schedule::Schedule;
//! // Hugging Face / official: 0 at the first step, 1 after 10 warmup steps, ½ halfway, 0 at the end
//! let hf = Schedule::Cosine;
//! assert_eq!(hf.factor(0, 10, 100), 0.0);
//! assert!((hf.factor(10, 10, 100) - 1.0).abs() < 1e-12 && (hf.factor(55, 10, 100) - 0.5).abs() < 1e-12);
//! // nanoGPT: (step + 1)/(warmup + 1), then cosine down to the floor, kept after the end
//! let nano = Schedule::NanoGpt { min_factor: 0.1 };
//! assert!((nano.factor(0, 9, 100) - 0.1).abs() < 1e-12);
//! assert!((nano.factor(100, 9, 100) - 0.1).abs() < 1e-12 && (nano.factor(500, 9, 100) - 0.1).abs() < 1e-12);
//! ```

/// Learning-rate schedule over the whole run: the multiplier of every group's rate.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warmup step/warmup (the first step at 0), then ½(1 + cos(π·progress)) down to 0
    /// (the official `cosine_warmup`, Hugging Face's `get_cosine_schedule_with_warmup`).
    Cosine,
    /// Linear warmup, then constant.
    Constant,
    /// nanoGPT's `get_lr`: linear warmup (step + 1)/(warmup + 1), then cosine from 1 down to
    /// `min_factor`, which it keeps after the last step.
    #[serde(rename = "nanogpt")]
    NanoGpt {
        /// The final multiplier (nanoGPT's `min_lr / learning_rate`).
        min_factor: f64,
    },
}

impl Schedule {
    /// The multiplier at 0-based `step` of `total` steps with `warmup` warmup steps: step/warmup
    /// during warmup (so the very first step has lr 0, as in Hugging Face's schedule the official
    /// code uses; nanoGPT's (step + 1)/(warmup + 1)), then with p = (step − warmup)/(total −
    /// warmup) clamped to 1: ½(1 + cos(πp)) (cosine), 1 (constant), or m + ½(1 + cos(πp))(1 − m)
    /// (nanoGPT, m = `min_factor`).
    pub fn factor(self, step: u64, warmup: u64, total: u64) -> f64 {
        if step < warmup {
            return match self {
                Schedule::NanoGpt { .. } => (step + 1) as f64 / (warmup + 1) as f64,
                _ => step as f64 / warmup as f64,
            };
        }
        let span = total.saturating_sub(warmup).max(1);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * ((step - warmup) as f64 / span as f64).min(1.0)).cos());
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => cosine,
            Schedule::NanoGpt { min_factor } => min_factor + cosine * (1.0 - min_factor),
        }
    }
}
