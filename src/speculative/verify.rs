//! Verification rules: given the verifier's distributions p₁…p_{γ+1} over a prefix and the drafted
//! tokens x₁…x_γ with their draft distributions q₁…q_γ, decide how many drafted tokens to keep and
//! which token to emit after them.
//!
//! | rule | keeps the verifier's distribution? |
//! |---|---|
//! | [`greedy`] | yes: the output is the verifier's own greedy decoding |
//! | [`rejection_sampling`] | yes: Leviathan et al. 2023 (Algorithm 1), Chen et al. 2023 (Theorem 1) |
//! | [`typical`] | **no (lossy)**: Medusa's typical acceptance (Cai et al. 2024) |
//!
//! # Example
//!
//! ```
//! use rand::{RngExt, SeedableRng};
//! use s4::speculative::verify::{greedy, rejection_sampling, typical, Outcome};
//!
//! // greedy: the verifier's arg-maxes are 1, 0, 2; the draft [1, 2] matches the first only
//! let rows: [&[f32]; 3] = [&[0.0, 2.0, 1.0], &[3.0, 0.0, 1.0], &[0.0, 0.0, 5.0]];
//! assert_eq!(greedy(&rows, &[1, 2])?, Outcome { accepted: 1, next: 0 }); // keep 1, correct to 0
//! assert_eq!(greedy(&rows, &[1, 0])?, Outcome { accepted: 2, next: 2 }); // all kept + bonus
//! assert!(greedy(&rows, &[1]).is_err()); // γ + 1 rows are needed
//!
//! // rejection sampling: the emitted token at a position is distributed as p, whatever q
//! let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
//! let p = vec![vec![0.6, 0.3, 0.1], vec![1.0 / 3.0; 3]]; // p₁, p₂ (γ = 1)
//! let q = vec![vec![0.1, 0.2, 0.7]]; // the draft's q₁
//! let (trials, mut counts) = (20_000, [0usize; 3]);
//! for _ in 0..trials {
//!     let u: f64 = rng.random(); // draw x₁ ~ q₁ by its CDF
//!     let x = if u < 0.1 { 0 } else if u < 0.3 { 1 } else { 2 };
//!     let o = rejection_sampling(&p, &q, &[x], &mut rng)?;
//!     counts[if o.accepted == 1 { x as usize } else { o.next as usize }] += 1; // first emitted token
//! }
//! for (c, want) in counts.iter().zip([0.6, 0.3, 0.1]) {
//!     assert!((*c as f64 / trials as f64 - want).abs() < 0.02);
//! }
//!
//! // typical acceptance (lossy) refuses a token the verifier finds unlikely
//! let p = vec![vec![0.98, 0.01, 0.01]; 2];
//! assert_eq!(typical(&p, &[1], 0.09, 0.3, &mut rng)?.accepted, 0);
//! assert_eq!(typical(&p, &[0], 0.09, 0.3, &mut rng)?.accepted, 1);
//! # Ok::<(), s4::Error>(())
//! ```

use rand::RngExt;

use super::sampling::{argmax, sample};
use crate::error::{Error, Result};

/// The result of verifying one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Number n of drafted tokens kept (0 ≤ n ≤ γ).
    pub accepted: usize,
    /// The token emitted after them: the correction at position n + 1 when n < γ, the bonus
    /// token drawn from p_{γ+1} when n = γ.
    pub next: u32,
}

/// Greedy verification. Rule: n = the length of the longest prefix of the draft with
/// xᵢ = argmax pᵢ; the next token is argmax p_{n+1}. With `p_logits` the verifier's logits rows
/// (γ + 1 of them), the emitted tokens are exactly the verifier's greedy continuation.
///
/// # Errors
/// `p_logits.len() != draft.len() + 1`.
pub fn greedy(p_logits: &[&[f32]], draft: &[u32]) -> Result<Outcome> {
    check_rows(p_logits.len(), draft.len())?;
    let mut n = 0;
    while n < draft.len() && argmax(p_logits[n]) as u32 == draft[n] {
        n += 1;
    }
    Ok(Outcome { accepted: n, next: argmax(p_logits[n]) as u32 })
}

/// Speculative (modified rejection) sampling. Rule, for i = 1…γ left to right: draw r ~ U[0, 1)
/// and keep xᵢ if r < pᵢ(xᵢ)/qᵢ(xᵢ) (probability min(1, p/q)); at the first rejection emit a
/// token drawn from the residual norm(max(0, pᵢ − qᵢ)) and stop; when all γ are kept emit a
/// bonus token drawn from p_{γ+1}. The emitted token at every position is distributed exactly as
/// the verifier's p (the proof is in the module docs of [`crate::speculative`]). A point-mass q
/// (an arg-max draft) is handled by the same rule: keep x with probability p(x), else draw from p
/// with x removed. If rounding leaves an all-zero residual, p itself is used (as mistral.rs does).
///
/// `p` holds γ + 1 distributions, `q` and `draft` γ each; all of length V, summing to 1.
///
/// # Errors
/// Mismatched lengths, a drafted token outside the vocabulary, or qᵢ(xᵢ) = 0 (the token cannot
/// have been drawn from qᵢ: the draft and the verifier disagree about q).
pub fn rejection_sampling<R: rand::Rng + ?Sized>(
    p: &[Vec<f64>],
    q: &[Vec<f64>],
    draft: &[u32],
    rng: &mut R,
) -> Result<Outcome> {
    check_rows(p.len(), draft.len())?;
    if q.len() != draft.len() {
        return Err(Error::invalid("draft distributions", q.len(), format!("one per drafted token ({})", draft.len())));
    }
    let v = p[0].len();
    for (i, &x) in draft.iter().enumerate() {
        let x = x as usize;
        if x >= v || q[i].len() != v || p[i].len() != v {
            return Err(Error::invalid(format!("draft[{i}]"), x, format!("a token id < vocabulary size {v}")));
        }
        let (pi, qi) = (p[i][x], q[i][x]);
        if qi <= 0.0 {
            return Err(Error::numerical(
                "speculative sampling",
                format!("drafted token {x} at position {i} has probability 0 under its own draft distribution"),
            ));
        }
        let r: f64 = rng.random();
        if r < pi / qi {
            continue;
        }
        let mut residual: Vec<f64> = p[i].iter().zip(&q[i]).map(|(a, b)| (a - b).max(0.0)).collect();
        if residual.iter().sum::<f64>() <= 0.0 {
            residual.clone_from(&p[i]);
        }
        return Ok(Outcome { accepted: i, next: sample(&residual, rng) });
    }
    Ok(Outcome { accepted: draft.len(), next: sample(&p[draft.len()], rng) })
}

/// Typical acceptance (Medusa, Cai et al. 2024) — **lossy**: the output no longer follows the
/// verifier's distribution. Rule: keep xᵢ while pᵢ(xᵢ) > min(ε, δ·exp(−H(pᵢ))), with H the
/// entropy of pᵢ; at the first refusal emit a token drawn from pᵢ itself, or the bonus token from
/// p_{γ+1} when all are kept. Medusa's defaults are ε = 0.09, δ = 0.3.
///
/// # Errors
/// Mismatched lengths or a drafted token outside the vocabulary.
pub fn typical<R: rand::Rng + ?Sized>(
    p: &[Vec<f64>],
    draft: &[u32],
    epsilon: f64,
    delta: f64,
    rng: &mut R,
) -> Result<Outcome> {
    check_rows(p.len(), draft.len())?;
    for (i, &x) in draft.iter().enumerate() {
        let pi = &p[i];
        let px = *pi
            .get(x as usize)
            .ok_or_else(|| Error::invalid(format!("draft[{i}]"), x, format!("a token id < {}", pi.len())))?;
        let entropy: f64 = pi.iter().filter(|&&a| a > 0.0).map(|&a| -a * a.ln()).sum();
        if px <= epsilon.min(delta * (-entropy).exp()) {
            return Ok(Outcome { accepted: i, next: sample(pi, rng) });
        }
    }
    Ok(Outcome { accepted: draft.len(), next: sample(&p[draft.len()], rng) })
}

fn check_rows(rows: usize, gamma: usize) -> Result<()> {
    if rows != gamma + 1 {
        return Err(Error::invalid(
            "verifier rows",
            rows,
            format!("γ + 1 = {} (one per drafted token plus the bonus position)", gamma + 1),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64;

    #[test]
    fn greedy_rule() {
        let rows: [&[f32]; 3] = [&[0.0, 2.0, 1.0], &[3.0, 0.0, 1.0], &[0.0, 0.0, 5.0]];
        assert_eq!(greedy(&rows, &[1, 0]).unwrap(), Outcome { accepted: 2, next: 2 });
        assert_eq!(greedy(&rows, &[1, 2]).unwrap(), Outcome { accepted: 1, next: 0 });
        assert_eq!(greedy(&rows, &[0, 0]).unwrap(), Outcome { accepted: 0, next: 1 });
        assert!(greedy(&rows, &[0]).is_err());
    }

    #[test]
    fn edge_cases() {
        let mut rng = Pcg64::seed_from_u64(0);
        // p == q: always accepted
        let p = vec![vec![0.2, 0.3, 0.5]; 3];
        for _ in 0..100 {
            let o = rejection_sampling(&p, &p[..2], &[2, 0], &mut rng).unwrap();
            assert_eq!(o.accepted, 2);
        }
        // disjoint supports: never accepted, residual = p
        let p = vec![vec![1.0, 0.0, 0.0]; 2];
        let q = vec![vec![0.0, 0.0, 1.0]];
        let o = rejection_sampling(&p, &q, &[2], &mut rng).unwrap();
        assert_eq!(o, Outcome { accepted: 0, next: 0 });
        // q(x) = 0 for a drafted token: an error, not an acceptance
        assert!(rejection_sampling(&p, &[vec![0.5, 0.5, 0.0]], &[2], &mut rng).is_err());
        // typical: a token the verifier finds unlikely is refused
        let p = vec![vec![0.98, 0.01, 0.01]; 2];
        assert_eq!(typical(&p, &[1], 0.09, 0.3, &mut rng).unwrap().accepted, 0);
        assert_eq!(typical(&p, &[0], 0.09, 0.3, &mut rng).unwrap().accepted, 1);
    }
}
