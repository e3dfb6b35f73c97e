//! The HiPPO memory: reconstructing the past of a band-limited signal from the state
//! (N = 64, Δ = 1e-3), with the sign-flipped bases as negative controls.

use s4::hippo::memory::{evaluate, run, MemoryConfig, MemoryOperator};

fn rel(op: MemoryOperator, n: usize, flipped: bool) -> f64 {
    evaluate(op, &MemoryConfig { n, dt: 1e-3, ..Default::default() }, flipped).unwrap().relative_rmse
}

#[test]
fn legt_and_scaled_legs_reconstruct_within_one_percent() {
    for op in [MemoryOperator::LegT, MemoryOperator::LegSScaled, MemoryOperator::LegS] {
        let e = rel(op, 64, false);
        println!("{op}: relative RMSE {e:.4}");
        assert!(e < 1e-2, "{op}: relative RMSE {e}");
    }
}

#[test]
fn sign_flipped_bases_fail() {
    for op in MemoryOperator::ALL {
        let e = rel(op, 64, true);
        assert!(e > 0.5, "{op}: the flipped basis should not reconstruct, got {e}");
    }
}

#[test]
fn fourier_and_laguerre_memories_converge_with_n() {
    // FouT: Gibbs at the window edges is excluded from the score; error halves as N doubles
    let f32_ = rel(MemoryOperator::FouT, 32, false);
    let f128 = rel(MemoryOperator::FouT, 128, false);
    assert!(f128 < 0.03 && f128 < f32_ / 2.0, "FouT {f32_} -> {f128}");
    // LagT converges slowly (Laguerre functions resolve little of a band-limited signal); still < 1
    let l128 = rel(MemoryOperator::LagT, 128, false);
    assert!(l128 < 0.5, "LagT N=128: {l128}");
}

#[test]
fn scaled_legs_first_coefficient_is_the_running_mean() {
    let cfg = MemoryConfig::default();
    let (_, signal) = s4::hippo::memory::signal_of(&cfg);
    let c = run(MemoryOperator::LegSScaled, signal.as_slice().unwrap(), 32, cfg.dt).unwrap();
    let mean = signal.mean().unwrap();
    assert!((c[0] - mean).abs() < 1e-3 * signal.iter().fold(0.0f64, |m, x| m.max(x.abs())), "{} vs {}", c[0], mean);
}

#[test]
fn bad_configurations_are_errors() {
    let e =
        evaluate(MemoryOperator::LegT, &MemoryConfig { n: 0, ..Default::default() }, false).unwrap_err().to_string();
    assert!(e.contains("N = 0"), "{e}");
    let e =
        evaluate(MemoryOperator::FouT, &MemoryConfig { n: 7, ..Default::default() }, false).unwrap_err().to_string();
    assert!(e.contains("N = 7") && e.contains("even"), "{e}");
    let e =
        evaluate(MemoryOperator::LegT, &MemoryConfig { dt: 0.0, ..Default::default() }, false).unwrap_err().to_string();
    assert!(e.contains("dt = 0"), "{e}");
    assert!(evaluate(MemoryOperator::LegT, &MemoryConfig { cutoff: f64::NAN, ..Default::default() }, false).is_err());
    assert!(evaluate(MemoryOperator::LegT, &MemoryConfig { duration: 1e-4, ..Default::default() }, false).is_err());
    assert!("legq".parse::<MemoryOperator>().is_err());
}
