//! Quick start: kernels, FFT convolution, a layer in both modes, and a streaming language model.
//! The code of the README's *Library* section, compiled and run.
//!
//! `cargo run --release --example quickstart`

use ndarray::{Array2, Array3};
use s4::conv::FftConv;
use s4::kernel::ssm_kernel;
use s4::layer::{ForwardOptions, S4LayerConfig};
use s4::model::S4ModelConfig;
use s4::ssm::SsmInitConfig;

fn main() -> s4::Result<()> {
    // kernels: 8 channels of S4 (HiPPO-LegS, N = 64), Δ log-uniform in [1e-3, 1e-1], seeded
    let params = SsmInitConfig { d_state: 64, channels: 8, seed: 0, ..Default::default() }.draw()?;
    let k = ssm_kernel::<f32>(&params, 4096, None)?; // (H, L)
    let u = Array3::<f32>::from_shape_fn((2, 8, 4096), |(b, h, t)| ((b + h + t) % 5) as f32 - 2.0); // (B, H, L)
    let y = FftConv::new().causal(u.view(), k.view(), None)?; // (B, H, L)
    println!("kernel {:?}, convolution {:?}", k.dim(), y.dim());

    // a layer in both modes: the recurrent step continues where the convolution stopped
    let layer = S4LayerConfig { d_model: 8, d_state: 64, ..Default::default() }.build()?;
    let out = layer.forward(u.view(), &ForwardOptions { return_state: true, ..Default::default() })?;
    let rec = layer.recurrent()?;
    let mut state = out.state.expect("asked for the state");
    let y_next = rec.step(&mut state, Array2::<f32>::zeros((2, 8)).view())?; // (B, H)
    println!("layer output {:?}, next step {:?}", out.y.dim(), y_next.dim());

    // a causal language model: prefill in convolutional mode, then one token at a time
    let lm = S4ModelConfig::causal_lm(256).build()?;
    let prompt = Array2::<u32>::from_shape_fn((1, 100), |(_, t)| (t % 256) as u32);
    let (logits, mut st) = lm.prefill(prompt.view())?; // (B, vocab)
    let next = lm.recurrent()?.step_tokens(&mut st, &[42])?;
    println!("prefill logits {:?}, next-token logits {:?}", logits.dim(), next.dim());
    Ok(())
}
