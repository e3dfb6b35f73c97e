//! Forward with a tape, and backward, of a whole [`S4Model`] in training mode.
//!
//! The forward pass is the model's own (same kernels, convolutions, dropout streams as
//! [`S4Model::forward_train`]) except that BatchNorm uses batch statistics (PyTorch's
//! `model.train()`), and it records what each backward needs. Gradients are returned in a model of
//! the same shape ([`zeros_like`]): `grads.blocks[i].layer.weights.c` is ∂ℓ/∂C of layer i, as
//! PyTorch's `p.grad` mirrors `p`.
//!
//! ```
//! use ndarray::Array2;
//! use s4::model::{Input, Pooling, S4ModelConfig};
//! use s4::train::grad::model::{evaluate_loss, forward_backward, Target, TrainOptions};
//! // a token classifier: without dropout the training step's loss is the evaluation loss
//! let mut cfg = S4ModelConfig { vocab_size: Some(5), d_output: 3, n_layers: 1, pooling: Pooling::Mean, ..Default::default() };
//! cfg.layer.d_model = 4;
//! cfg.layer.d_state = 8;
//! let mut model = cfg.build_as::<f64>()?;
//! model.set_kernel_length(6)?; // DPLR layers tie C̃ to the training length
//! let tokens = Array2::from_shape_fn((2, 6), |(b, t)| ((b + 2 * t) % 5) as u32);
//! let classes = [0u32, 2];
//! let opts = TrainOptions { dropout_seed: None, update_running_stats: false };
//! let (stats, grads) = forward_backward(&mut model, Input::Tokens(tokens.view()), None, Target::Classes(&classes), opts)?;
//! let eval = evaluate_loss(&model, Input::Tokens(tokens.view()), None, Target::Classes(&classes))?;
//! assert!((stats.loss - eval.loss).abs() < 1e-12);
//! assert_eq!(stats.count, 2);
//! // one small step against the gradient lowers the loss
//! use s4::train::grad::model::tensors_mut;
//! let mut g = grads;
//! let steps: Vec<Vec<f64>> = tensors_mut(&mut g).into_iter().map(|t| t.values.to_vec()).collect();
//! let mut stepped = model.clone();
//! for (t, d) in tensors_mut(&mut stepped).into_iter().zip(&steps) {
//!     t.values.iter_mut().zip(d).for_each(|(w, d)| *w -= 1e-3 * d);
//! }
//! let after = evaluate_loss(&stepped, Input::Tokens(tokens.view()), None, Target::Classes(&classes))?;
//! assert!(after.loss < eval.loss);
//! # Ok::<(), s4::Error>(())
//! ```

use super::conv::conv_backward;
use super::kernel::{diag_kernel_backward, dplr_kernel_backward, SsmGrads};
use super::ops::{batch_norm_backward, batch_norm_forward, dropout_mask, embedding_backward, glu_backward, NormCache};
use crate::conv::{FftConv, InputSpectra};
use crate::error::{Error, Result};
use crate::layer::{S4Layer, Weights};
use crate::model::loss::{check_lengths, check_target};
pub use crate::model::loss::{LossStats, Target};
use crate::model::norm::EPS;
use crate::model::{Encoder, Input, Norm, NormKind, Pooling, S4Model};
use crate::nn::linear::{linear_features, linear_features_backward};
use crate::nn::loss::{cross_entropy, kl_divergence, mse};
use crate::nn::norm::{layer_norm_backward, layer_norm_forward, LayerNormCache};
pub use crate::nn::params::{first_non_finite, squared_norm, ParamGroup, Parameters, TensorMut};
use crate::nn::{feature_rows, from_feature_rows, gelu_backward_in_place, gelu_in_place, glu_features};
use crate::scalar::Real;
use crate::ssm::KernelKind;
use ndarray::{s, Array2, Array3, ArrayView1, ArrayView3, Axis, Zip};
use num_complex::Complex;

/// A model with every weight zero (the shape of its gradient).
pub fn zeros_like<T: Real>(model: &S4Model<T>) -> S4Model<T> {
    let mut g = model.clone();
    for_each_tensor(&mut g, &mut |_, _, x| x.fill(T::zero()));
    for blk in &mut g.blocks {
        blk.norm.running_mean.fill(T::zero());
        blk.norm.running_var.fill(T::zero());
    }
    if let Some(n) = g.final_norm.as_mut() {
        n.running_mean.fill(T::zero());
        n.running_var.fill(T::zero());
    }
    g
}

fn real<T>(a: &mut ndarray::ArrayBase<ndarray::OwnedRepr<T>, impl ndarray::Dimension>) -> &mut [T] {
    a.as_slice_mut().expect("owned weights are contiguous")
}

fn cplx<T: Real>(a: &mut ndarray::ArrayBase<ndarray::OwnedRepr<Complex<T>>, impl ndarray::Dimension>) -> &mut [T] {
    let s = a.as_slice_mut().expect("owned weights are contiguous");
    // SAFETY: Complex<T> is #[repr(C)] { re: T, im: T }, so a slice of n complex numbers is a
    // slice of 2n reals with the same alignment, borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<T>(), 2 * s.len()) }
}

/// Every trainable tensor of `model`, in a fixed order (the same for any two models of one
/// configuration, so a model, its gradient and the optimizer moments line up entry by entry).
pub fn tensors_mut<T: Real>(model: &mut S4Model<T>) -> Vec<TensorMut<'_, T>> {
    let mut out = Vec::new();
    let mut push = |name: String, group: ParamGroup, values| out.push(TensorMut { name, group, values });
    match &mut model.encoder {
        Encoder::Linear { w, b } => {
            push("encoder.weight".into(), ParamGroup::Decay, real(w));
            push("encoder.bias".into(), ParamGroup::NoDecay, real(b));
        }
        // the official optimizer hooks blacklist nn.Embedding from weight decay
        Encoder::Embedding { table } => push("encoder.weight".into(), ParamGroup::NoDecay, real(table)),
    }
    for (i, blk) in model.blocks.iter_mut().enumerate() {
        let w = &mut blk.layer.weights;
        let p = format!("layers.{i}.");
        push(format!("{p}layer.D"), ParamGroup::Decay, real(&mut w.d));
        push(format!("{p}layer.kernel.inv_dt"), ParamGroup::Dt, real(&mut w.inv_dt));
        push(format!("{p}layer.kernel.A_real"), ParamGroup::A, real(&mut w.a_real));
        push(format!("{p}layer.kernel.A_imag"), ParamGroup::A, real(&mut w.a_imag));
        push(format!("{p}layer.kernel.B"), ParamGroup::B, cplx(&mut w.b));
        push(format!("{p}layer.kernel.C"), ParamGroup::Decay, cplx(&mut w.c));
        if let Some(pp) = w.p.as_mut() {
            push(format!("{p}layer.kernel.P"), ParamGroup::A, cplx(pp));
        }
        push(format!("{p}output_linear.0.weight"), ParamGroup::Decay, real(&mut w.w));
        push(format!("{p}output_linear.0.bias"), ParamGroup::NoDecay, real(&mut w.bias));
        push(format!("{p}norm.weight"), ParamGroup::NoDecay, real(&mut blk.norm.weight));
        push(format!("{p}norm.bias"), ParamGroup::NoDecay, real(&mut blk.norm.bias));
    }
    if let Some(n) = model.final_norm.as_mut() {
        push("norm.weight".into(), ParamGroup::NoDecay, real(&mut n.weight));
        push("norm.bias".into(), ParamGroup::NoDecay, real(&mut n.bias));
    }
    push("decoder.weight".into(), ParamGroup::Decay, real(&mut model.decoder_w));
    push("decoder.bias".into(), ParamGroup::NoDecay, real(&mut model.decoder_b));
    out
}

impl<T: Real> Parameters for S4Model<T> {
    type Scalar = T;

    fn parameters_mut(&mut self) -> Vec<TensorMut<'_, T>> {
        tensors_mut(self)
    }

    fn zeros_like(&self) -> Self {
        zeros_like(self)
    }
}

/// Calls `f(name, group, values)` on every trainable tensor of `model` (see [`tensors_mut`]).
pub fn for_each_tensor<T: Real>(model: &mut S4Model<T>, f: &mut dyn FnMut(&str, ParamGroup, &mut [T])) {
    for t in tensors_mut(model) {
        f(&t.name, t.group, t.values);
    }
}

/// Everything a layer's backward needs.
struct LayerTape<T> {
    /// Masked input (B, H, L).
    u: Array3<T>,
    /// Kernel (C'', H, L_k).
    kernel: Array3<T>,
    /// The spectra of the zero-padded u, kept by the first channel's convolution for every
    /// channel's backward.
    u_spectra: InputSpectra<T>,
    /// SSM output before GELU (B, channels·H, L).
    y: Array3<T>,
    /// Dropout mask after GELU, if active.
    drop: Option<Array3<T>>,
    /// Input of the output linear (B, channels·H, L).
    a: Array3<T>,
    /// Output linear before GLU (B, 2H, L).
    z: Array3<T>,
}

fn mask_lengths<T: Real>(x: &mut Array3<T>, lengths: Option<&[usize]>) {
    if let Some(lengths) = lengths {
        for (b, &n) in lengths.iter().enumerate() {
            x.slice_mut(s![b, .., n..]).fill(T::zero());
        }
    }
}

fn layer_forward<T: Real>(
    layer: &S4Layer<T>,
    u: ArrayView3<T>,
    lengths: Option<&[usize]>,
    drop_seed: Option<u64>,
) -> Result<(Array3<T>, LayerTape<T>)> {
    let cfg = layer.config();
    let (batch, h, len) = u.dim();
    let mut u = u.to_owned();
    mask_lengths(&mut u, lengths);
    let lk = cfg.l_max.map_or(len, |m| m.min(len));
    if cfg.kernel == KernelKind::Dplr && layer.weights.l_kernel < lk {
        return Err(Error::invalid(
            "l_kernel",
            layer.weights.l_kernel,
            format!(">= the kernel length {lk} in training (tie C̃ to the longest training length first)"),
        ));
    }
    let kernel = layer.kernel(lk)?;
    let ch = cfg.channels;
    let mut conv = FftConv::<T>::new();
    let mut y = Array3::<T>::zeros((batch, ch * h, len));
    let mut u_spectra = None;
    for c in 0..ch {
        let d = Some(layer.weights.d.row(c));
        let (kf, kb) = (kernel.index_axis(Axis(0), c), cfg.bidirectional.then(|| kernel.index_axis(Axis(0), ch + c)));
        let yc = match (c, kb) {
            (0, _) => {
                let (yc, sp) = conv.convolve_keeping_input_spectra(u.view(), kf, kb, d)?;
                u_spectra = Some(sp);
                yc
            }
            (_, Some(kb)) => conv.bidirectional(u.view(), kf, kb, d)?,
            (_, None) => conv.causal(u.view(), kf, d)?,
        };
        y.slice_mut(s![.., c * h..(c + 1) * h, ..]).assign(&yc);
    }
    let u_spectra = u_spectra.ok_or_else(|| Error::invalid("channels", 0, "at least one SSM channel"))?;
    let mut a = y.clone();
    gelu_in_place(a.as_slice_mut().expect("a fresh array"));
    let drop = drop_seed.filter(|_| cfg.dropout > 0.0).map(|seed| dropout_mask::<T>(a.dim(), cfg.dropout, seed));
    if let Some(m) = &drop {
        a *= m;
    }
    let z = linear_features(a.view(), layer.weights.w.view(), layer.weights.bias.view());
    let mut out = glu_features(z.view());
    mask_lengths(&mut out, lengths);
    Ok((out, LayerTape { u, kernel, u_spectra, y, drop, a, z }))
}

/// Maps the gradients of the per-row SSM parameters back to the layer's stored tensors.
fn ssm_to_weights<T: Real>(layer: &S4Layer<T>, sg: &SsmGrads<T>, g: &mut Weights<T>) {
    let cfg = layer.config();
    let w = &layer.weights;
    let (h, n_ssm) = (cfg.d_model, cfg.n_ssm());
    let (rows, m) = sg.lambda.dim();
    for r in 0..rows {
        let (head, hh) = (r / h, r % h);
        let k = hh % n_ssm;
        let dt_d = cfg.dt_transform.derivative(w.inv_dt[hh].as_f64());
        g.inv_dt[hh] += T::of(sg.dt[r].as_f64() * dt_d);
        for j in 0..m {
            let gl = sg.lambda[[r, j]];
            let re_d = cfg.real_transform.derivative(w.a_real[[k, j]].as_f64());
            g.a_real[[k, j]] += T::of(gl.re.as_f64() * re_d);
            g.a_imag[[k, j]] -= gl.im;
            g.b[[k, j]] += sg.b[[r, j]];
            g.c[[head, hh, j]] += sg.c[[r, j]];
            if let (Some(gp), Some(sp)) = (g.p.as_mut(), sg.p.as_ref()) {
                for q in 0..sp.shape()[0] {
                    gp[[q, k, j]] += sp[[q, r, j]];
                }
            }
        }
    }
}

fn layer_backward<T: Real>(
    layer: &S4Layer<T>,
    tape: &LayerTape<T>,
    lengths: Option<&[usize]>,
    g_out: ArrayView3<T>,
    g: &mut Weights<T>,
) -> Result<Array3<T>> {
    let cfg = layer.config();
    let w = &layer.weights;
    let (batch, h, len) = tape.u.dim();
    let mut go = g_out.to_owned();
    mask_lengths(&mut go, lengths);
    let gz = glu_backward(tape.z.view(), go.view());
    let (mut ga, gw, gb) = linear_features_backward(tape.a.view(), w.w.view(), gz.view());
    g.w += &gw;
    g.bias += &gb;
    if let Some(m) = &tape.drop {
        ga *= m;
    }
    // through GELU
    gelu_backward_in_place(ga.as_slice_mut().expect("a fresh array"), tape.y.as_slice().expect("a fresh array"));
    let ch = cfg.channels;
    let lk = tape.kernel.shape()[2];
    let heads = cfg.c_heads();
    let mut gk = Array2::<T>::zeros((heads * h, lk));
    let mut gu = Array3::<T>::zeros((batch, h, len));
    for c in 0..ch {
        let gy = ga.slice(s![.., c * h..(c + 1) * h, ..]);
        let kb = cfg.bidirectional.then(|| tape.kernel.index_axis(Axis(0), ch + c));
        let cg = conv_backward(tape.u.view(), tape.kernel.index_axis(Axis(0), c), kb, gy, Some(&tape.u_spectra))?;
        if c == 0 {
            gu = cg.input;
        } else {
            gu += &cg.input;
        }
        gk.slice_mut(s![c * h..(c + 1) * h, ..]).assign(&cg.k_fwd);
        if let Some(gkb) = cg.k_bwd {
            gk.slice_mut(s![(ch + c) * h..(ch + c + 1) * h, ..]).assign(&gkb);
        }
        // D skip: y += D ⊙ u
        for hh in 0..h {
            let d = w.d[[c, hh]];
            let mut gd = T::zero();
            for b in 0..batch {
                let (gyr, ur) = (gy.slice(s![b, hh, ..]), tape.u.slice(s![b, hh, ..]));
                gd = Zip::from(&gyr).and(&ur).fold(gd, |a, &x, &y| a + x * y);
                Zip::from(gu.slice_mut(s![b, hh, ..])).and(&gyr).for_each(|gv, &x| *gv += d * x);
            }
            g.d[[c, hh]] += gd;
        }
    }
    let params = layer.ssm_params()?;
    let sg = match cfg.kernel {
        KernelKind::Dplr => dplr_kernel_backward(&params, w.l_kernel, gk.view())?,
        KernelKind::Diag => diag_kernel_backward(&params, gk.view(), cfg.discretization())?,
    };
    ssm_to_weights(layer, &sg, g);
    mask_lengths(&mut gu, lengths);
    Ok(gu)
}

/// What a norm's backward needs.
enum NormTape<T> {
    /// LayerNorm over the feature rows (B·L, H) of the sequence.
    Layer(LayerNormCache<T>),
    /// BatchNorm (training mode).
    Batch(NormCache<T>),
}

/// A norm's forward in training mode, returning its tape (and updating BatchNorm's running
/// statistics with momentum 0.1, as PyTorch does).
fn norm_forward<T: Real>(norm: &mut Norm<T>, x: ArrayView3<T>, update_running: bool) -> (Array3<T>, NormTape<T>) {
    match norm.kind {
        NormKind::Layer => {
            let (b, _, l) = x.dim();
            let (y, cache) = layer_norm_forward(feature_rows(x).view(), norm.weight.view(), norm.bias.view(), EPS);
            (from_feature_rows(y, b, l), NormTape::Layer(cache))
        }
        NormKind::Batch => {
            let (y, cache, mean, var) = batch_norm_forward(x, norm.weight.view(), norm.bias.view());
            if update_running {
                let mom = T::of(0.1);
                norm.running_mean = &norm.running_mean * (T::one() - mom) + &(mean * mom);
                norm.running_var = &norm.running_var * (T::one() - mom) + &(var * mom);
            }
            (y, NormTape::Batch(cache))
        }
    }
}

fn norm_backward<T: Real>(norm: &Norm<T>, tape: &NormTape<T>, gy: ArrayView3<T>, g: &mut Norm<T>) -> Array3<T> {
    let (gx, gw, gb) = match tape {
        NormTape::Layer(cache) => {
            let (b, _, l) = gy.dim();
            let (gx, gw, gb) = layer_norm_backward(cache, norm.weight.view(), feature_rows(gy).view());
            (from_feature_rows(gx, b, l), gw, gb)
        }
        NormTape::Batch(cache) => batch_norm_backward(cache, norm.weight.view(), gy),
    };
    g.weight += &gw;
    g.bias += &gb;
    gx
}

struct BlockTape<T> {
    layer: LayerTape<T>,
    norm: NormTape<T>,
    resid_drop: Option<Array3<T>>,
}

/// Options of [`forward_backward`].
#[derive(Clone, Copy, Debug)]
pub struct TrainOptions {
    /// Dropout seed (the same streams as [`S4Model::forward_train`] with this seed); `None`
    /// disables dropout.
    pub dropout_seed: Option<u64>,
    /// Update BatchNorm's running statistics.
    pub update_running_stats: bool,
}

/// Training-mode forward, loss, and backward of `model` on one batch.
///
/// Returns the loss statistics and the gradients (a model of the same shape; see [`zeros_like`]).
/// BatchNorm uses batch statistics and, if asked, updates the model's running statistics.
///
/// # Errors
/// Bad inputs (as [`S4Model::forward`]), a target that does not fit the model's pooling and
/// output size, or a DPLR layer whose C̃ is tied to a length shorter than the input.
pub fn forward_backward<T: Real>(
    model: &mut S4Model<T>,
    input: Input<T>,
    lengths: Option<&[usize]>,
    target: Target,
    opts: TrainOptions,
) -> Result<(LossStats, S4Model<T>)> {
    let mut grads = zeros_like(model);
    let mut x = model.encode(input)?;
    let (batch, h, len) = x.dim();
    let cfg = model.config().clone();
    // every check before the forward pass, which updates BatchNorm's running statistics
    check_lengths(lengths, batch, len)?;
    check_target(&target, cfg.pooling, cfg.d_output, batch, len)?;
    let mut tapes = Vec::with_capacity(model.blocks.len());
    for (i, blk) in model.blocks.iter_mut().enumerate() {
        let layer_seed = opts.dropout_seed.map(|s| s.wrapping_add(2 * i as u64 + 1));
        let resid_drop = opts
            .dropout_seed
            .filter(|_| cfg.dropout > 0.0)
            .map(|s| dropout_mask::<T>((batch, h, len), cfg.dropout, s.wrapping_add(2 * i as u64 + 2)));
        if cfg.prenorm {
            let (z, nc) = norm_forward(&mut blk.norm, x.view(), opts.update_running_stats);
            let (mut out, lt) = layer_forward(&blk.layer, z.view(), lengths, layer_seed)?;
            if let Some(m) = &resid_drop {
                out *= m;
            }
            x += &out;
            tapes.push(BlockTape { layer: lt, norm: nc, resid_drop });
        } else {
            let (mut out, lt) = layer_forward(&blk.layer, x.view(), lengths, layer_seed)?;
            if let Some(m) = &resid_drop {
                out *= m;
            }
            let (y, nc) = norm_forward(&mut blk.norm, (x + &out).view(), opts.update_running_stats);
            x = y;
            tapes.push(BlockTape { layer: lt, norm: nc, resid_drop });
        }
    }
    let final_cache = match model.final_norm.as_mut() {
        Some(n) => {
            let (y, c) = norm_forward(n, x.view(), opts.update_running_stats);
            x = y;
            Some(c)
        }
        None => None,
    };
    let valid = |b: usize| lengths.map_or(len, |l| l[b]);
    // decoder and loss
    let (stats, gx) = match cfg.pooling {
        Pooling::Mean | Pooling::Last => {
            let pooled = Array2::from_shape_fn((batch, h), |(b, j)| match cfg.pooling {
                Pooling::Mean => {
                    x.slice(s![b, j, ..valid(b)]).iter().fold(T::zero(), |a, &v| a + v) / T::of(valid(b) as f64)
                }
                _ => x[[b, j, valid(b) - 1]],
            });
            let logits = pooled.dot(&model.decoder_w.t()) + &model.decoder_b;
            let (stats, glogits) = match target {
                Target::Classes(y) => {
                    let (loss, g, correct) = cross_entropy(logits.view(), ArrayView1::from(y))?;
                    (LossStats { loss, correct, count: batch }, g)
                }
                Target::Values(y) => {
                    let (loss, g) = mse(logits.column(0), y);
                    (LossStats { loss, correct: 0, count: batch }, g.insert_axis(Axis(1)))
                }
                Target::Tokens(_) | Target::Distill { .. } => {
                    unreachable!("check_target: pooled models take one target per sequence")
                }
            };
            grads.decoder_w = glogits.t().dot(&pooled);
            grads.decoder_b = glogits.sum_axis(Axis(0));
            let gp = glogits.dot(&model.decoder_w);
            let mut gx = Array3::<T>::zeros((batch, h, len));
            for b in 0..batch {
                let n = valid(b);
                for j in 0..h {
                    match cfg.pooling {
                        Pooling::Mean => gx.slice_mut(s![b, j, ..n]).fill(gp[[b, j]] / T::of(n as f64)),
                        _ => gx[[b, j, n - 1]] = gp[[b, j]],
                    }
                }
            }
            (stats, gx)
        }
        Pooling::None => {
            let (y, soft) = match target {
                Target::Tokens(y) => (y, None),
                Target::Distill { tokens, teacher, soft_weight } => (tokens, Some((teacher, soft_weight))),
                _ => unreachable!("check_target: unpooled models take per-position tokens"),
            };
            let logits = linear_features(x.view(), model.decoder_w.view(), model.decoder_b.view());
            let v = cfg.d_output;
            // rows = valid positions
            let pos: Vec<(usize, usize)> = (0..batch).flat_map(|b| (0..valid(b)).map(move |t| (b, t))).collect();
            let flat = Array2::from_shape_fn((pos.len(), v), |(r, k)| logits[[pos[r].0, k, pos[r].1]]);
            let labels: Vec<u32> = pos.iter().map(|&(b, t)| y[[b, t]]).collect();
            let (mut loss, mut g, correct) = cross_entropy(flat.view(), ArrayView1::from(&labels))?;
            if let Some((teacher, w)) = soft {
                let p = Array2::from_shape_fn((pos.len(), v), |(r, k)| teacher[[pos[r].0, pos[r].1, k]]);
                let (kl, gkl) = kl_divergence(flat.view(), p.view())?;
                loss += w * kl;
                g.scaled_add(T::of(w), &gkl);
            }
            let mut glog = Array3::<T>::zeros((batch, v, len));
            for (r, &(b, t)) in pos.iter().enumerate() {
                for k in 0..v {
                    glog[[b, k, t]] = g[[r, k]];
                }
            }
            let (gx, gw, gb) = linear_features_backward(x.view(), model.decoder_w.view(), glog.view());
            grads.decoder_w = gw;
            grads.decoder_b = gb;
            (LossStats { loss, correct, count: pos.len() }, gx)
        }
    };
    let mut gx = gx;
    if let (Some(n), Some(c)) = (model.final_norm.as_ref(), final_cache.as_ref()) {
        gx = norm_backward(n, c, gx.view(), grads.final_norm.as_mut().expect("same shape"));
    }
    for (i, tape) in tapes.iter().enumerate().rev() {
        let blk = &model.blocks[i];
        let gblk = &mut grads.blocks[i];
        if cfg.prenorm {
            let mut gout = gx.clone();
            if let Some(m) = &tape.resid_drop {
                gout *= m;
            }
            let gz = layer_backward(&blk.layer, &tape.layer, lengths, gout.view(), &mut gblk.layer.weights)?;
            gx += &norm_backward(&blk.norm, &tape.norm, gz.view(), &mut gblk.norm);
        } else {
            let gs = norm_backward(&blk.norm, &tape.norm, gx.view(), &mut gblk.norm);
            let mut gout = gs.clone();
            if let Some(m) = &tape.resid_drop {
                gout *= m;
            }
            gx = gs + &layer_backward(&blk.layer, &tape.layer, lengths, gout.view(), &mut gblk.layer.weights)?;
        }
    }
    match (&model.encoder, input, &mut grads.encoder) {
        (Encoder::Linear { w: ew, .. }, Input::Features(xin), Encoder::Linear { w, b }) => {
            let (_, gw, gb) = linear_features_backward(xin, ew.view(), gx.view());
            *w = gw;
            *b = gb;
        }
        (Encoder::Embedding { table }, Input::Tokens(tok), Encoder::Embedding { table: gt }) => {
            *gt = embedding_backward(tok, gx.view(), table.nrows());
        }
        _ => unreachable!("encode() checked the input kind"),
    }
    Ok((stats, grads))
}

/// Evaluation-mode loss of `model` on one batch (no dropout, BatchNorm running statistics): the
/// same loss as [`forward_backward`] computes, from [`S4Model::forward`].
///
/// # Errors
/// As [`forward_backward`].
pub fn evaluate_loss<T: Real>(
    model: &S4Model<T>,
    input: Input<T>,
    lengths: Option<&[usize]>,
    target: Target,
) -> Result<LossStats> {
    let out = model.forward(input, lengths)?;
    let (batch, _, len) = out.dim();
    check_target(&target, model.config().pooling, model.config().d_output, batch, len)?;
    match target {
        Target::Classes(y) => {
            let logits = out.index_axis(Axis(2), 0).to_owned();
            let (loss, _, correct) = cross_entropy::<T>(logits.view(), ArrayView1::from(y))?;
            Ok(LossStats { loss, correct, count: batch })
        }
        Target::Values(y) => {
            let (loss, _) = mse::<T>(out.slice(s![.., 0, 0]), y);
            Ok(LossStats { loss, correct: 0, count: batch })
        }
        Target::Tokens(_) | Target::Distill { .. } => {
            let (y, soft) = match target {
                Target::Distill { tokens, teacher, soft_weight } => (tokens, Some((teacher, soft_weight))),
                Target::Tokens(y) => (y, None),
                _ => unreachable!("matched above"),
            };
            let valid = |b: usize| lengths.map_or(len, |l| l[b]);
            let pos: Vec<(usize, usize)> = (0..batch).flat_map(|b| (0..valid(b)).map(move |t| (b, t))).collect();
            let v = out.shape()[1];
            let flat = Array2::from_shape_fn((pos.len(), v), |(r, k)| out[[pos[r].0, k, pos[r].1]]);
            let labels: Vec<u32> = pos.iter().map(|&(b, t)| y[[b, t]]).collect();
            let (mut loss, _, correct) = cross_entropy::<T>(flat.view(), ArrayView1::from(&labels))?;
            if let Some((teacher, w)) = soft {
                let p = Array2::from_shape_fn((pos.len(), v), |(r, k)| teacher[[pos[r].0, pos[r].1, k]]);
                loss += w * kl_divergence(flat.view(), p.view())?.0;
            }
            Ok(LossStats { loss, correct, count: pos.len() })
        }
    }
}
