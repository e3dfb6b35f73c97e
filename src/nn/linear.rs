//! Linear maps, each a forward/backward pair: over rows ([`linear`], x (N, in)·W (in, out), the
//! transformers' layout) and over the feature axis of (B, F, L) sequences ([`linear_features`],
//! W (O, F), the S4 layout); and the kernels behind them, which both model families share. Linear layers with a
//! few rows (single-token decoding, scoring a handful of draft tokens) stream the weight matrix
//! once in order (`small_matmul_body`), which is what a memory-bound pass needs; with more rows
//! they use matrixmultiply's gemm (ndarray's `general_mat_mul`), in blocks of rows run in
//! parallel; decoding passes of up to 96 rows read weights packed in column panels
//! (`PackedMatrix`, `packed_linear_into`). The hot loops go through the SIMD dispatch of
//! [`simd`](super::simd).

use super::simd::{as_f32, as_f32_mut, axpy_body, madd, simd_dispatch, SimdLevel};
use crate::scalar::{HalfPrecision, MatmulPrecision, Real};
use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Up to this many rows, linear layers and the LM head stream the weights instead of calling gemm
/// (whose packing of the weights costs as much as 8–12 rows of products).
pub(crate) const SMALL_ROWS: usize = 8;
/// Row block of the parallel gemm (a fixed size, so results never depend on the thread count).
const GEMM_ROWS: usize = 64;
/// Below about this many multiply–adds a task is not worth sending to another thread.
pub(crate) const PAR_WORK: usize = 1 << 17;

/// Output columns per block of [`small_matmul_body`]: with 4 weight rows and up to
/// [`SMALL_ROWS`] output rows, a block's working set (≤ 12 KiB in f32) stays in L1.
const COL_BLOCK: usize = 256;

/// `out += x·w`: x (m, k) and out (m, o) row-major, w (k, o) with rows `ws` apart (w_i at
/// `w[i·ws ..][.. o]`). By blocks of [`COL_BLOCK`] output columns, four rows of `w` at a time are
/// combined into each output row (y_r += x_r,i·w_i + … + x_r,i+3·w_i+3): every weight is read
/// from memory once, in order, and the output block is loaded and stored k/4 times from L1 (a
/// plain axpy per weight row would be bound by those loads and stores).
#[inline(always)]
pub(crate) fn small_matmul_body<T: Real, const FMA: bool>(
    x: &[T],
    k: usize,
    w: &[T],
    ws: usize,
    o: usize,
    out: &mut [T],
) {
    let madd = madd::<T, FMA>;
    let m = out.len() / o.max(1);
    for j0 in (0..o).step_by(COL_BLOCK) {
        let cb = COL_BLOCK.min(o - j0);
        let mut i = 0;
        while i + 4 <= k {
            let seg = |r: usize| &w[r * ws + j0..][..cb];
            let (w0, w1, w2, w3) = (seg(i), seg(i + 1), seg(i + 2), seg(i + 3));
            for r in 0..m {
                let xr = &x[r * k..][..k];
                let (a0, a1, a2, a3) = (xr[i], xr[i + 1], xr[i + 2], xr[i + 3]);
                let y = &mut out[r * o + j0..][..cb];
                // indices over equal lengths (a chain of four zips is not always inlined)
                for j in 0..cb {
                    y[j] = madd(a3, w3[j], madd(a2, w2[j], madd(a1, w1[j], madd(a0, w0[j], y[j]))));
                }
            }
            i += 4;
        }
        for i in i..k {
            let wi = &w[i * ws + j0..][..cb];
            for r in 0..m {
                axpy_body::<T, FMA>(&mut out[r * o + j0..][..cb], x[r * k + i], wi);
            }
        }
    }
}

simd_dispatch! {
    /// [`small_matmul_body`] with the widest vectors the CPU has.
    fn small_matmul(x: &[T], k: usize, w: &[T], ws: usize, o: usize, out: &mut [T]) -> () = small_matmul_body
}

/// `out = x·w (+ out)`: for at most [`SMALL_ROWS`] rows by [`small_matmul`] (w in standard
/// layout), otherwise by gemm, in parallel blocks of [`GEMM_ROWS`] rows when large. `out` holds
/// the bias (or zeros) on entry.
fn matmul_acc<T: Real>(x: ArrayView2<T>, w: ArrayView2<T>, mut out: ArrayViewMut2<T>) {
    let (n, k) = x.dim();
    if n <= SMALL_ROWS && k > 0 && w.is_standard_layout() && out.is_standard_layout() {
        let xs = x.as_standard_layout();
        let o = w.ncols();
        small_matmul(
            xs.as_slice().expect("standard layout"),
            k,
            w.as_slice().expect("standard layout"),
            o,
            o,
            out.as_slice_mut().expect("standard layout"),
        );
    } else if n >= 2 * GEMM_ROWS && n * k * w.ncols() >= PAR_WORK {
        out.axis_chunks_iter_mut(Axis(0), GEMM_ROWS)
            .into_par_iter()
            .zip(x.axis_chunks_iter(Axis(0), GEMM_ROWS))
            .for_each(|(mut o, xb)| general_mat_mul(T::one(), &xb, &w, T::one(), &mut o));
    } else {
        general_mat_mul(T::one(), &x, &w, T::one(), &mut out);
    }
}

/// y = x·W + b: x (N, in), W (in, out) (`Conv1D` layout), b (out,) → (N, out).
pub fn linear<T: Real>(x: ArrayView2<T>, w: ArrayView2<T>, b: ArrayView1<T>) -> Array2<T> {
    let mut y = Array2::<T>::zeros((x.nrows(), w.ncols()));
    y.assign(&b.broadcast((x.nrows(), w.ncols())).expect("bias of the output width"));
    matmul_acc(x, w, y.view_mut());
    y
}

/// logits = x·wteᵀ: x (N, C), wte (V, C) → (N, V), by gemm (decoding passes use a packed copy
/// of wteᵀ instead: [`PackedColumns`]).
pub(crate) fn lm_head<T: Real>(x: ArrayView2<T>, wte: ArrayView2<T>) -> Array2<T> {
    let mut y = Array2::<T>::zeros((x.nrows(), wte.nrows()));
    matmul_acc(x, wte.t(), y.view_mut());
    y
}

/// Column sums of dy (N, O) → (O,), in row order.
pub(crate) fn col_sums<T: Real>(dy: ArrayView2<T>) -> Array1<T> {
    let mut s = Array1::<T>::zeros(dy.ncols());
    for r in dy.outer_iter() {
        s += &r;
    }
    s
}

/// How many panel rows (64-byte lines in f32) ahead [`packed_tile_avx512`] prefetches.
const PREFETCH_ROWS: usize = 32;

/// Columns per panel of a [`PackedMatrix`] (one AVX-512 register of f32).
pub(crate) const PANEL: usize = 16;

/// A stored weight value, widened to the compute type as it is loaded: the compute type itself,
/// or a 16-bit format ([`HalfPrecision`]) whose values the kernels widen to f32 in registers, so a
/// pass streams half the bytes.
pub(crate) trait Stored<T>: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// Rounds a weight to this format.
    fn store(x: T) -> Self;
    /// The value in the compute type (exact).
    fn widen(self) -> T;
    /// 16 values at `p` as f32 lanes (AVX-512F).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; 16 values are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// 8 values at `p` as f32 lanes (AVX2 + F16C).
    ///
    /// # Safety
    /// The CPU supports AVX2 and F16C; 8 values are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl<T: Real> Stored<T> for T {
    #[inline(always)]
    fn store(x: T) -> Self {
        x
    }
    #[inline(always)]
    fn widen(self) -> T {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // only reached with T = f32 (the f64 kernels are the generic body)
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p.cast::<f32>()) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p.cast::<f32>()) }
    }
}

impl<T: Real> Stored<T> for half::bf16 {
    #[inline(always)]
    fn store(x: T) -> Self {
        half::bf16::from_f64(x.as_f64())
    }
    #[inline(always)]
    fn widen(self) -> T {
        // bf16 is the upper half of an f32
        T::of(f32::from_bits(u32::from(self.to_bits()) << 16) as f64)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
    }
}

impl<T: Real> Stored<T> for half::f16 {
    #[inline(always)]
    fn store(x: T) -> Self {
        half::f16::from_f64(x.as_f64())
    }
    #[inline(always)]
    fn widen(self) -> T {
        T::of(self.to_f64())
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

/// The values of a [`PackedMatrix`]: in the compute type, in 16 bits, or in bf16 pairs for
/// [`MatmulPrecision::Medium`] products.
#[derive(Clone, Debug)]
enum Panels<T> {
    Full(Vec<T>),
    Bf16(Vec<half::bf16>),
    F16(Vec<half::f16>),
    /// Rows 2i and 2i + 1 of a panel column in one word, W[2i, j] in the low half and
    /// W[2i + 1, j] in the high half (`data[(p·⌈k/2⌉ + i)·PANEL + c]`, zero past row k and column
    /// o): one 64-byte panel row holds 16 columns × 2 rows, the operand of `vdpbf16ps`.
    Bf16Pairs(Vec<u32>),
}

/// A weight matrix W (k, o) stored for decoding: panels of [`PANEL`] consecutive columns, each
/// panel k rows of `PANEL` contiguous values (`data[p·k·PANEL + i·PANEL + c] = W[i, p·PANEL + c]`,
/// zero past column o). A product with a few rows then reads the weights in one sequential
/// stream, where the row-major layout would read `PANEL` columns at a stride of o values. The
/// values are kept in the compute type or, with a [`HalfPrecision`], in 16 bits (rounded to
/// nearest even), which the kernels widen as they load them. Weights whose every value is a bf16
/// value (as read from a bf16 checkpoint) are kept in bf16 without being asked: the same products
/// bit for bit, from half the bytes.
#[derive(Clone, Debug)]
pub(crate) struct PackedMatrix<T> {
    k: usize,
    o: usize,
    panels: Panels<T>,
}

impl<T: Real> PackedMatrix<T> {
    /// Packs `w` (k, o), its values rounded to `precision` if given.
    pub(crate) fn with_precision(w: ArrayView2<T>, precision: Option<HalfPrecision>) -> Self {
        let (k, o) = w.dim();
        let panels = match precision {
            None if bf16_values(w) => Panels::Bf16(pack(w)),
            None => Panels::Full(pack(w)),
            Some(HalfPrecision::Bf16) => Panels::Bf16(pack(w)),
            Some(HalfPrecision::F16) => Panels::F16(pack(w)),
        };
        PackedMatrix { k, o, panels }
    }

    /// The bytes its values take.
    pub(crate) fn bytes(&self) -> usize {
        match &self.panels {
            Panels::Full(d) => std::mem::size_of_val(&d[..]),
            Panels::Bf16(d) => std::mem::size_of_val(&d[..]),
            Panels::F16(d) => std::mem::size_of_val(&d[..]),
            Panels::Bf16Pairs(d) => std::mem::size_of_val(&d[..]),
        }
    }

    /// Packs `w` (k, o) for the arithmetic `matmul`: as [`with_precision`](Self::with_precision)
    /// for [`MatmulPrecision::Highest`], in bf16 pairs (the values rounded to bf16 whatever
    /// `precision` says) for [`MatmulPrecision::Medium`].
    pub(crate) fn with_matmul(w: ArrayView2<T>, precision: Option<HalfPrecision>, matmul: MatmulPrecision) -> Self {
        match matmul {
            MatmulPrecision::Highest => Self::with_precision(w, precision),
            MatmulPrecision::Medium => {
                let (k, o) = w.dim();
                PackedMatrix { k, o, panels: Panels::Bf16Pairs(pack_pairs(w)) }
            }
        }
    }
}

/// x rounded to bf16 (to nearest, ties to even), its 16 bits; a subnormal result becomes a zero
/// of its sign, as `vdpbf16ps` reads it (its inputs are treated as zeros, "DAZ"), so that every
/// path computes with the same values.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    // branch-free (the activations' conversion is vectorized): `half::bf16::from_f32`'s rounding
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let r = if b & 0x7fff_ffff > 0x7f80_0000 { (b >> 16) | 0x40 } else { rounded };
    if r & 0x7f80 == 0 {
        r & 0x8000
    } else {
        r
    }
}

/// The bf16 pairs of `w` (k, o) (see [`Panels::Bf16Pairs`]).
fn pack_pairs<T: Real>(w: ArrayView2<T>) -> Vec<u32> {
    let (k, o) = w.dim();
    let (panels, pairs) = (o.div_ceil(PANEL), k.div_ceil(2));
    let mut data = vec![0u32; panels * pairs * PANEL];
    for (i, row) in w.rows().into_iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            data[((j / PANEL) * pairs + i / 2) * PANEL + j % PANEL] |= bf16_bits(v.as_f64() as f32) << (16 * (i % 2));
        }
    }
    data
}

/// The rows of x (m, k) in bf16 pairs: word i of row r holds x[r, 2i] (low half) and
/// x[r, 2i + 1] (high half, zero past k). Every product reads its activations this way, so the
/// conversion must cost far less than a multiply–add per value: 16 values per few instructions
/// at the AVX-512 level ([`bf16_halves_avx512`]).
fn pair_rows<T: Real>(x: &[T], m: usize, k: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut out = vec![0u32; m * pairs];
    #[cfg(all(target_arch = "x86_64", target_endian = "little"))]
    if let Some(x) = as_f32(x)
        && SimdLevel::current() == SimdLevel::Avx512
    {
        // SAFETY: u16 halves of the u32 words (little-endian: half 2i is word i's low half).
        let halves = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u16>(), 2 * out.len()) };
        for (row, h) in x.chunks_exact(k.max(1)).take(m).zip(halves.chunks_exact_mut(2 * pairs.max(1))) {
            // SAFETY: the CPU supports AVX-512F (`current` never exceeds it).
            unsafe { bf16_halves_avx512(row, &mut h[..k]) };
        }
        return out;
    }
    for (row, words) in x.chunks_exact(k.max(1)).take(m).zip(out.chunks_exact_mut(pairs.max(1))) {
        for (i, &v) in row.iter().enumerate() {
            words[i / 2] |= bf16_bits(v.as_f64() as f32) << (16 * (i % 2));
        }
    }
    out
}

/// `out[i]` = [`bf16_bits`]`(x[i])` for equal lengths, 16 values at a time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bf16_halves_avx512(x: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    assert_eq!(x.len(), out.len());
    let n = x.len();
    let mut i = 0;
    while i < n {
        let mask: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
        // SAFETY: the masked lanes are within x and out.
        unsafe {
            let b = _mm512_maskz_loadu_epi32(mask, x.as_ptr().add(i).cast());
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
            let rounded =
                _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))));
            let magnitude = _mm512_and_si512(b, _mm512_set1_epi32(0x7fff_ffff));
            let nan = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
            let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
            let r = _mm512_mask_blend_epi32(nan, rounded, quiet);
            // a zero exponent (subnormal or zero): the sign alone
            let tiny = _mm512_testn_epi32_mask(r, _mm512_set1_epi32(0x7f80));
            let r = _mm512_mask_blend_epi32(tiny, r, _mm512_and_si512(r, _mm512_set1_epi32(0x8000)));
            _mm512_mask_cvtepi32_storeu_epi16(out.as_mut_ptr().add(i).cast(), mask, r);
        }
        i += 16;
    }
}

/// The low (even) and high (odd) bf16 of a pair word as values.
#[inline(always)]
fn unpair<T: Real>(word: u32) -> (T, T) {
    (T::of(f32::from_bits(word << 16) as f64), T::of(f32::from_bits(word & 0xffff_0000) as f64))
}

/// Whether every value of `w` is a bf16 value, so that bf16 panels hold it exactly.
fn bf16_values<T: Real>(w: ArrayView2<T>) -> bool {
    w.iter().all(|v| {
        let (f, s) = (v.as_f64(), v.as_f64() as f32);
        f64::from(s) == f && half::bf16::from_f32(s).to_f32() == s
    })
}

/// The panels of `w` (k, o) in the storage format S (see [`PackedMatrix`]).
fn pack<T: Real, S: Stored<T>>(w: ArrayView2<T>) -> Vec<S> {
    let (k, o) = w.dim();
    let panels = o.div_ceil(PANEL);
    let mut data = vec![S::store(T::zero()); panels * k * PANEL];
    for (i, row) in w.rows().into_iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            data[((j / PANEL) * k + i) * PANEL + j % PANEL] = S::store(v);
        }
    }
    data
}

/// What varies between the kinds of panels in the generic kernel: the activation a row of x
/// holds per panel row (`X`), the stored panel row (`D`), the panel row as loaded (`Row`), and
/// how one activation and one loaded panel row update a row's [`PANEL`] accumulators.
trait PanelRows<T: Real> {
    type X: Copy;
    type D: Copy;
    type Row: Copy;
    /// A panel row ([`PANEL`] stored values) as the kernel combines it.
    fn load(w: &[Self::D]) -> Self::Row;
    /// `acc += x · row`, lane by lane, in the kind's order of operations.
    fn madd_row<const FMA: bool>(x: Self::X, row: &Self::Row, acc: &mut [T; PANEL]);
}

/// Panels of one weight per column and panel row ([`Stored`] values, widened exactly).
struct Widened<S>(std::marker::PhantomData<S>);

impl<T: Real, S: Stored<T>> PanelRows<T> for Widened<S> {
    type X = T;
    type D = S;
    type Row = [T; PANEL];
    #[inline(always)]
    fn load(w: &[S]) -> [T; PANEL] {
        // plain loops throughout: closures (`array::from_fn`) do not inherit the caller's target
        // features and may stay out-of-line calls
        let mut row = [T::zero(); PANEL];
        for l in 0..PANEL {
            row[l] = w[l].widen();
        }
        row
    }
    #[inline(always)]
    fn madd_row<const FMA: bool>(x: T, row: &[T; PANEL], acc: &mut [T; PANEL]) {
        for l in 0..PANEL {
            acc[l] = madd::<T, FMA>(x, row[l], acc[l]);
        }
    }
}

/// Panels of bf16 pairs ([`MatmulPrecision::Medium`]) with activations in bf16 pairs: each
/// column sums as `vdpbf16ps` does, acc ← (acc + x₂ᵢ₊₁·w₂ᵢ₊₁) + x₂ᵢ·w₂ᵢ. A product of two bf16
/// values is exact in f32 (8 + 8 significant bits of 24), so a fused and a plain multiply–add give
/// the instruction's bits in f32 (in f64 the sums round as f64).
struct Pairs;

impl<T: Real> PanelRows<T> for Pairs {
    type X = u32;
    type D = u32;
    type Row = ([T; PANEL], [T; PANEL]);
    #[inline(always)]
    fn load(w: &[u32]) -> Self::Row {
        let (mut even, mut odd) = ([T::zero(); PANEL], [T::zero(); PANEL]);
        for l in 0..PANEL {
            (even[l], odd[l]) = unpair(w[l]);
        }
        (even, odd)
    }
    #[inline(always)]
    fn madd_row<const FMA: bool>(x: u32, (even, odd): &Self::Row, acc: &mut [T; PANEL]) {
        let (xe, xo) = unpair::<T>(x);
        for l in 0..PANEL {
            acc[l] = madd::<T, FMA>(xe, even[l], madd::<T, FMA>(xo, odd[l], acc[l]));
        }
    }
}

/// `out[r0 + r, j0 .. j0 + n] += x_{r0+r} · W[:, j0 .. j0 + n]` for the `R` rows of a register tile
/// (n = the panel's valid columns, j0 = panel·[`PANEL`]): the R × [`PANEL`] accumulators stay in
/// registers for the whole sum over the `depth` rows of the panel, and each panel row (loaded
/// once) is applied to all R rows by multiply–adds with a broadcast of x's activation.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn packed_tile_body<T: Real, K: PanelRows<T>, const FMA: bool, const R: usize>(
    x: &[K::X],
    panel: &[K::D],
    depth: usize,
    o: usize,
    out: &mut [T],
    r0: usize,
    j0: usize,
) {
    let n = PANEL.min(o - j0);
    let mut acc = [[T::zero(); PANEL]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        a[..n].copy_from_slice(&out[(r0 + r) * o + j0..][..n]);
    }
    let xs = &x[r0 * depth..(r0 + R) * depth];
    for (i, wi) in panel.chunks_exact(PANEL).enumerate() {
        let row = K::load(wi);
        for (r, a) in acc.iter_mut().enumerate() {
            K::madd_row::<FMA>(xs[r * depth + i], &row, a);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        out[(r0 + r) * o + j0..][..n].copy_from_slice(&a[..n]);
    }
}

/// `out += x·W` for m rows (x (m, depth), out (m, o) row-major) with W's panels `data` (depth
/// panel rows each): panel by panel, rows in register tiles of at most `MR`
/// ([`packed_tile_body`]); a panel read for the first tile is still in cache for the next.
#[inline(always)]
fn packed_matmul_body<T: Real, K: PanelRows<T>, const FMA: bool, const MR: usize>(
    x: &[K::X],
    data: &[K::D],
    depth: usize,
    o: usize,
    out: &mut [T],
) {
    let m = out.len() / o.max(1);
    for (p, panel) in data.chunks_exact(depth * PANEL).enumerate() {
        let mut r0 = 0;
        while r0 < m {
            let r = MR.min(m - r0);
            macro_rules! tiles {
                ($($n:literal)*) => {
                    match r {
                        $($n => packed_tile_body::<T, K, FMA, $n>(x, panel, depth, o, out, r0, p * PANEL),)*
                        _ => unreachable!("register tiles have 1 to 16 rows"),
                    }
                };
            }
            tiles!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            r0 += r;
        }
    }
}

/// What the AVX-512 register tiles of widened weights ([`Widened`]) and of bf16 pairs
/// ([`Pairs`]) differ in: the activation a row of x holds per panel row (`X`), the stored panel
/// value (`D`), the register a panel row or a broadcast activation is (`V`), and the
/// multiply–add; [`packed_tile_avx512_body`] is the tile itself.
#[cfg(target_arch = "x86_64")]
trait Avx512Tile {
    type X: Copy;
    type D: Copy;
    type V: Copy;
    /// One panel row ([`PANEL`] columns) at `p`.
    ///
    /// # Safety
    /// The CPU supports the kind's instructions; the row is readable at `p`.
    unsafe fn load(p: *const Self::D) -> Self::V;
    /// An activation in every lane.
    ///
    /// # Safety
    /// As [`load`](Self::load).
    unsafe fn broadcast(x: Self::X) -> Self::V;
    /// `acc` plus the products of a broadcast activation and a panel row, lane by lane.
    ///
    /// # Safety
    /// As [`load`](Self::load).
    unsafe fn madd(acc: std::arch::x86_64::__m512, x: Self::V, w: Self::V) -> std::arch::x86_64::__m512;
    /// The tile at rows `r0 ..` and panels `p0 ..` (x rows and panels `depth` deep), compiled with
    /// the kind's target features.
    ///
    /// # Safety
    /// The CPU supports the kind's instructions; shapes as [`packed_tile_avx512_body`] requires.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const P: usize>(
        x: &[Self::X],
        data: &[Self::D],
        depth: usize,
        o: usize,
        out: &mut [f32],
        r0: usize,
        p0: usize,
    );
}

/// [`packed_tile_body`] with AVX-512 intrinsics, over R rows and P consecutive panels (from panel
/// `p0`): one 16-lane accumulator per row and panel, initialized from `out` (the columns past o
/// masked off); each panel row is loaded once (and widened, for 16-bit weights) and combined with
/// every row by the kind's multiply–add with a broadcast of the row's activation. Few rows take
/// several panels, so that 4 or more independent multiply–add chains hide the instruction's
/// latency (one row of one panel is a single dependent chain). Every output sums in the same
/// order (out, then the panel rows in order) whatever the tile, so a row's result does not depend
/// on the rows computed with it.
///
/// # Safety
/// The CPU supports K's instructions (the caller's target features); `x` holds rows `r0 .. r0 + R`
/// of `depth` activations, `data` the whole packed matrix with panels `p0 .. p0 + P`, each
/// `depth` rows deep, `out` rows `r0 .. r0 + R` of length o.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_tile_avx512_body<K: Avx512Tile, const R: usize, const P: usize>(
    x: &[K::X],
    data: &[K::D],
    depth: usize,
    o: usize,
    out: &mut [f32],
    r0: usize,
    p0: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY (the block): the caller's target features; every offset stays within the rows and
    // panels the caller guarantees, and the masked lanes within the rows of `out`.
    unsafe {
        let xs = x.as_ptr().add(r0 * depth);
        let mut masks: [__mmask16; P] = [0xffff; P];
        let mut acc = [[_mm512_setzero_ps(); R]; P];
        for q in 0..P {
            let j0 = (p0 + q) * PANEL;
            let n = PANEL.min(o - j0);
            masks[q] = if n == PANEL { 0xffff } else { (1u16 << n) - 1 };
            for r in 0..R {
                acc[q][r] = _mm512_maskz_loadu_ps(masks[q], out.as_ptr().add((r0 + r) * o + j0));
            }
        }
        let w = data.as_ptr().add(p0 * depth * PANEL);
        for i in 0..depth {
            // the P panel rows first, then one broadcast at a time: R·P accumulators, P weights
            // and one broadcast fit the 32 registers for every tile (all R broadcasts held at
            // once did not from 10 rows of 2 panels or 16 of one on, and spilled)
            // (initialized with the first panel's row, loaded again below: one load after CSE)
            let mut wi = [K::load(w.add(i * PANEL)); P];
            for (q, v) in wi.iter_mut().enumerate() {
                let wq = w.add(q * depth * PANEL + i * PANEL);
                // each panel is one sequential stream: ask for it well ahead of its use
                _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(PREFETCH_ROWS * PANEL).cast::<i8>());
                *v = K::load(wq);
            }
            for r in 0..R {
                let xb = K::broadcast(*xs.add(r * depth + i));
                for q in 0..P {
                    acc[q][r] = K::madd(acc[q][r], xb, wi[q]);
                }
            }
        }
        for q in 0..P {
            let j0 = (p0 + q) * PANEL;
            for r in 0..R {
                _mm512_mask_storeu_ps(out.as_mut_ptr().add((r0 + r) * o + j0), masks[q], acc[q][r]);
            }
        }
    }
}

/// [`packed_tile_avx512_body`] for f32 activations and widened weights: `vfmadd231ps`.
///
/// # Safety
/// The CPU must support AVX-512F; shapes as [`packed_tile_avx512_body`] requires.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_tile_avx512<S: Stored<f32>, const R: usize, const P: usize>(
    x: &[f32],
    data: &[S],
    k: usize,
    o: usize,
    out: &mut [f32],
    r0: usize,
    p0: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe { packed_tile_avx512_body::<Widened<S>, R, P>(x, data, k, o, out, r0, p0) }
}

/// [`packed_tile_avx512_body`] for bf16 pairs ([`MatmulPrecision::Medium`]) with the AVX512-BF16
/// instruction `vdpbf16ps`: each 64-byte panel row holds two weight rows of 16 columns, each
/// broadcast word two activations of a row, and one instruction adds both products to 16
/// accumulators (32 multiply–adds, against 16 for `vfmadd231ps`), with no widening of the
/// weights. Sums as [`Pairs`] does, so a row's result is the generic kernel's, whatever the tile.
///
/// # Safety
/// The CPU must support AVX-512F and AVX512-BF16; shapes as [`packed_tile_avx512_body`] requires
/// (x rows and panels `pairs` words deep).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_tile_bf16_avx512<const R: usize, const P: usize>(
    x: &[u32],
    data: &[u32],
    pairs: usize,
    o: usize,
    out: &mut [f32],
    r0: usize,
    p0: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe { packed_tile_avx512_body::<Pairs, R, P>(x, data, pairs, o, out, r0, p0) }
}

#[cfg(target_arch = "x86_64")]
impl<S: Stored<f32>> Avx512Tile for Widened<S> {
    type X = f32;
    type D = S;
    type V = std::arch::x86_64::__m512;
    #[inline(always)]
    unsafe fn load(p: *const S) -> Self::V {
        // SAFETY: forwarded from the caller (AVX-512F).
        unsafe { S::load16(p) }
    }
    #[inline(always)]
    unsafe fn broadcast(x: f32) -> Self::V {
        // SAFETY: AVX-512F, as the caller guarantees.
        unsafe { std::arch::x86_64::_mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn madd(acc: Self::V, x: Self::V, w: Self::V) -> Self::V {
        // SAFETY: AVX-512F, as the caller guarantees.
        unsafe { std::arch::x86_64::_mm512_fmadd_ps(x, w, acc) }
    }
    #[inline(always)]
    unsafe fn tile<const R: usize, const P: usize>(
        x: &[f32],
        data: &[S],
        depth: usize,
        o: usize,
        out: &mut [f32],
        r0: usize,
        p0: usize,
    ) {
        // SAFETY: forwarded from the caller (AVX-512F).
        unsafe { packed_tile_avx512::<S, R, P>(x, data, depth, o, out, r0, p0) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Avx512Tile for Pairs {
    type X = u32;
    type D = u32;
    type V = std::arch::x86_64::__m512bh;
    #[inline(always)]
    unsafe fn load(p: *const u32) -> Self::V {
        use std::arch::x86_64::*;
        // SAFETY: AVX-512F, as the caller guarantees; 16 words readable at `p`. A bf16 vector is
        // the same 64 bytes as the integer one.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }
    #[inline(always)]
    unsafe fn broadcast(x: u32) -> Self::V {
        use std::arch::x86_64::*;
        // SAFETY: as in `load`.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(x as i32)) }
    }
    #[inline(always)]
    unsafe fn madd(acc: std::arch::x86_64::__m512, x: Self::V, w: Self::V) -> std::arch::x86_64::__m512 {
        // SAFETY: AVX-512F and AVX512-BF16, as the caller guarantees.
        unsafe { std::arch::x86_64::_mm512_dpbf16_ps(acc, x, w) }
    }
    #[inline(always)]
    unsafe fn tile<const R: usize, const P: usize>(
        x: &[u32],
        data: &[u32],
        depth: usize,
        o: usize,
        out: &mut [f32],
        r0: usize,
        p0: usize,
    ) {
        // SAFETY: forwarded from the caller (AVX-512F and AVX512-BF16).
        unsafe { packed_tile_bf16_avx512::<R, P>(x, data, depth, o, out, r0, p0) }
    }
}

/// `out += x·W` in f32 with W packed, AVX-512: rows in tiles of up to 16 (of even sizes), each
/// tile over blocks of 4, 2 or 1 panels of the tile kind K (more panels for fewer rows; at
/// most 24 of the 32 vector registers hold accumulators, beside the panels' weights and one
/// broadcast).
///
/// # Safety
/// The CPU must support AVX-512F and K's instructions; x (m, depth) and out (m, o) row-major.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn packed_matmul_avx512<K: Avx512Tile>(x: &[K::X], data: &[K::D], k: usize, o: usize, out: &mut [f32]) {
    unsafe {
        let m = out.len() / o.max(1);
        let panels = o.div_ceil(PANEL);
        assert!(x.len() >= m * k && out.len() == m * o && data.len() == panels * k * PANEL);
        // as few tiles as 16-row tiles allow, of even sizes (17 rows: 9 + 8, not 16 + 1)
        let per_tile = m.div_ceil(m.div_ceil(16).max(1)).max(1);
        // panels per block: at least 8 independent accumulators (an FMA's latency times the two
        // FMA ports) and at most 16
        let block = match per_tile {
            1..=4 => 4,
            5..=12 => 2,
            _ => 1,
        };
        // block by block of panels (a block, block·k·64 bytes, stays in cache for every row tile)
        let mut p = 0;
        while p < panels {
            let q = block.min(panels - p);
            let mut r0 = 0;
            while r0 < m {
                let r = per_tile.min(m - r0);
                match (r, q) {
                    (1, 4) => K::tile::<1, 4>(x, data, k, o, out, r0, p),
                    (2, 4) => K::tile::<2, 4>(x, data, k, o, out, r0, p),
                    (3, 4) => K::tile::<3, 4>(x, data, k, o, out, r0, p),
                    (4, 4) => K::tile::<4, 4>(x, data, k, o, out, r0, p),
                    (5, 2) => K::tile::<5, 2>(x, data, k, o, out, r0, p),
                    (6, 2) => K::tile::<6, 2>(x, data, k, o, out, r0, p),
                    (7, 2) => K::tile::<7, 2>(x, data, k, o, out, r0, p),
                    (8, 2) => K::tile::<8, 2>(x, data, k, o, out, r0, p),
                    (9, 2) => K::tile::<9, 2>(x, data, k, o, out, r0, p),
                    (10, 2) => K::tile::<10, 2>(x, data, k, o, out, r0, p),
                    (11, 2) => K::tile::<11, 2>(x, data, k, o, out, r0, p),
                    (12, 2) => K::tile::<12, 2>(x, data, k, o, out, r0, p),
                    (_, _) => {
                        // one panel at a time (larger tiles, or the panels left after blocks)
                        for pp in p..p + q {
                            macro_rules! tiles {
                                ($($n:literal)*) => {
                                    match r {
                                        $($n => K::tile::<$n, 1>(x, data, k, o, out, r0, pp),)*
                                        _ => unreachable!("register tiles have 1 to 16 rows"),
                                    }
                                };
                            }
                            tiles!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
                        }
                    }
                }
                r0 += r;
            }
            p += q;
        }
    }
}

/// [`packed_tile_body`] for f32 with AVX2 + FMA intrinsics, over R rows and P consecutive panels
/// (from panel `p0`): two 8-lane accumulators per row and panel, initialized from `out`; each
/// panel row is loaded once and combined with every row by `vfmadd231ps`. Few rows take more
/// panels, so that at least 6–8 independent multiply–add chains hide the instruction's latency
/// (R·2·P ≤ 12 accumulators of the 16 registers). Every output is summed in the same order
/// (out, then i = 0, 1, …, k − 1) whatever the tile: a row's result does not depend on how many
/// rows are computed with it (and equals the AVX-512 kernel's).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x` holds rows `r0 .. r0 + R` of length k, `data`
/// the whole packed matrix with panels `p0 .. p0 + P`, `out` rows `r0 .. r0 + R` of length o.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_tile_avx2<S: Stored<f32>, const R: usize, const P: usize>(
    x: &[f32],
    data: &[S],
    k: usize,
    o: usize,
    out: &mut [f32],
    r0: usize,
    p0: usize,
) {
    unsafe {
        use std::arch::x86_64::*;
        let xs = x.as_ptr().add(r0 * k);
        let mut lo = [[_mm256_setzero_ps(); R]; P];
        let mut hi = [[_mm256_setzero_ps(); R]; P];
        // a partial (last) panel goes through a full-width copy of its rows
        let mut edge = [[0.0f32; PANEL]; R];
        for q in 0..P {
            let j0 = (p0 + q) * PANEL;
            let n = PANEL.min(o - j0);
            for r in 0..R {
                let dst = out.as_ptr().add((r0 + r) * o + j0);
                let src = if n == PANEL {
                    dst
                } else {
                    std::ptr::copy_nonoverlapping(dst, edge[r].as_mut_ptr(), n);
                    edge[r].as_ptr()
                };
                lo[q][r] = _mm256_loadu_ps(src);
                hi[q][r] = _mm256_loadu_ps(src.add(8));
            }
        }
        let w = data.as_ptr().add(p0 * k * PANEL);
        for i in 0..k {
            if P == 1 {
                // one panel: its row first, then one broadcast at a time (2·R accumulators, two
                // weights and one broadcast fit the 16 registers up to 6 rows; all R broadcasts
                // held at once did not)
                let wq = w.add(i * PANEL);
                _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(PREFETCH_ROWS * PANEL).cast::<i8>());
                let (w0, w1) = (S::load8(wq), S::load8(wq.add(8)));
                for r in 0..R {
                    let xb = _mm256_set1_ps(*xs.add(r * k + i));
                    lo[0][r] = _mm256_fmadd_ps(xb, w0, lo[0][r]);
                    hi[0][r] = _mm256_fmadd_ps(xb, w1, hi[0][r]);
                }
                continue;
            }
            // several panels (1 or 2 rows): the broadcasts once, then panel by panel
            // (a plain loop: a closure (`array::from_fn`) does not inherit the target features
            // and stays an out-of-line call per broadcast)
            let mut xb = [_mm256_setzero_ps(); R];
            for (r, b) in xb.iter_mut().enumerate() {
                *b = _mm256_set1_ps(*xs.add(r * k + i));
            }
            for q in 0..P {
                let wq = w.add(q * k * PANEL + i * PANEL);
                // each panel is one sequential stream: ask for it well ahead of its use
                _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(PREFETCH_ROWS * PANEL).cast::<i8>());
                let (w0, w1) = (S::load8(wq), S::load8(wq.add(8)));
                for r in 0..R {
                    lo[q][r] = _mm256_fmadd_ps(xb[r], w0, lo[q][r]);
                    hi[q][r] = _mm256_fmadd_ps(xb[r], w1, hi[q][r]);
                }
            }
        }
        for q in 0..P {
            let j0 = (p0 + q) * PANEL;
            let n = PANEL.min(o - j0);
            for r in 0..R {
                let dst = out.as_mut_ptr().add((r0 + r) * o + j0);
                if n == PANEL {
                    _mm256_storeu_ps(dst, lo[q][r]);
                    _mm256_storeu_ps(dst.add(8), hi[q][r]);
                } else {
                    _mm256_storeu_ps(edge[r].as_mut_ptr(), lo[q][r]);
                    _mm256_storeu_ps(edge[r].as_mut_ptr().add(8), hi[q][r]);
                    std::ptr::copy_nonoverlapping(edge[r].as_ptr(), dst, n);
                }
            }
        }
    }
}

/// `out += x·W` in f32 with W packed, AVX2 + FMA: rows in tiles of up to 6 (of even sizes), each
/// tile over [`packed_tile_avx2`] blocks of 4, 2 or 1 panels (more panels for fewer rows).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; x (m, k) and out (m, o) row-major.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn packed_matmul_avx2<S: Stored<f32>>(x: &[f32], data: &[S], k: usize, o: usize, out: &mut [f32]) {
    unsafe {
        let m = out.len() / o.max(1);
        let panels = o.div_ceil(PANEL);
        assert!(x.len() >= m * k && out.len() == m * o && data.len() == panels * k * PANEL);
        let per_tile = m.div_ceil(m.div_ceil(6).max(1)).max(1);
        // panels per block: the tile's rows times 2·P accumulators stay within 12 registers
        // (3 rows over 2 panels needed 17 of the 16 registers and spilled: t(3) was 1.1× t(4))
        let block = match per_tile {
            1 => 4,
            2 => 2,
            _ => 1,
        };
        let d = data;
        // block by block of panels (a block, block·k·64 bytes, stays in cache for every row tile)
        let mut p = 0;
        while p < panels {
            let q = block.min(panels - p);
            let mut r0 = 0;
            while r0 < m {
                let r = per_tile.min(m - r0);
                match (r, q) {
                    (1, 4) => packed_tile_avx2::<S, 1, 4>(x, d, k, o, out, r0, p),
                    (1, 2) => packed_tile_avx2::<S, 1, 2>(x, d, k, o, out, r0, p),
                    (2, 2) => packed_tile_avx2::<S, 2, 2>(x, d, k, o, out, r0, p),
                    (_, _) => {
                        // one panel at a time (q = 1, or 3 panels left after blocks of 4)
                        for pp in p..p + q {
                            match r {
                                1 => packed_tile_avx2::<S, 1, 1>(x, d, k, o, out, r0, pp),
                                2 => packed_tile_avx2::<S, 2, 1>(x, d, k, o, out, r0, pp),
                                3 => packed_tile_avx2::<S, 3, 1>(x, d, k, o, out, r0, pp),
                                4 => packed_tile_avx2::<S, 4, 1>(x, d, k, o, out, r0, pp),
                                5 => packed_tile_avx2::<S, 5, 1>(x, d, k, o, out, r0, pp),
                                6 => packed_tile_avx2::<S, 6, 1>(x, d, k, o, out, r0, pp),
                                _ => unreachable!("register tiles have 1 to 6 rows"),
                            }
                        }
                    }
                }
                r0 += r;
            }
            p += q;
        }
    }
}

/// `out += x·W` with W packed, with the widest vectors [`SimdLevel::current`] allows and register
/// tiles sized to its register file: in f32 by intrinsics, [`packed_matmul_avx512`] (up to 16
/// rows per tile) or [`packed_matmul_avx2`] (up to 6); otherwise (f64, or the baseline target) the
/// generic [`packed_matmul_body`] with tiles of up to 8 rows with AVX-512, 6 with AVX2 + FMA, 3 on
/// the baseline target. 16-bit weights are widened as they are loaded, on every path.
fn packed_matmul<T: Real>(x: &[T], w: &PackedMatrix<T>, out: &mut [T]) {
    let (k, o) = (w.k, w.o);
    match &w.panels {
        Panels::Full(d) => {
            if let (Some(x), Some(d), Some(out)) = (as_f32(x), as_f32(d), as_f32_mut(&mut *out))
                && packed_matmul_f32(x, d, k, o, out)
            {
                return;
            }
            packed_matmul_generic::<T, Widened<T>>(x, d, k, o, out)
        }
        Panels::Bf16(d) => packed_matmul_half(x, d, k, o, out),
        Panels::F16(d) => packed_matmul_half(x, d, k, o, out),
        // each column part of a product converts x for itself: the parts run at once on the two
        // cores, and one conversion before them (serial) measured no faster
        Panels::Bf16Pairs(d) => packed_matmul_pairs(x, d, k, o, out),
    }
}

/// [`packed_matmul`] with bf16 pairs ([`MatmulPrecision::Medium`]): x's rows rounded to bf16
/// pairs, then `vdpbf16ps` ([`packed_tile_bf16_avx512`]) at the AVX-512 level on a CPU with
/// AVX512-BF16, else the generic kernel's same sums ([`Pairs`]).
fn packed_matmul_pairs<T: Real>(x: &[T], d: &[u32], k: usize, o: usize, out: &mut [T]) {
    let pairs = k.div_ceil(2);
    let xp = pair_rows(x, out.len() / o.max(1), k);
    #[cfg(target_arch = "x86_64")]
    if SimdLevel::current() == SimdLevel::Avx512
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && let Some(out) = as_f32_mut(&mut *out)
    {
        // SAFETY: the CPU supports AVX-512F (`current` never exceeds it) and AVX512-BF16
        // (detected); shapes asserted inside.
        unsafe { packed_matmul_avx512::<Pairs>(&xp, d, pairs, o, out) };
        return;
    }
    packed_matmul_generic::<T, Pairs>(&xp, d, pairs, o, out)
}

/// [`packed_matmul`] with 16-bit panels.
fn packed_matmul_half<T: Real, S: Stored<T> + Stored<f32>>(x: &[T], d: &[S], k: usize, o: usize, out: &mut [T]) {
    if let (Some(x), Some(out)) = (as_f32(x), as_f32_mut(&mut *out))
        && packed_matmul_f32(x, d, k, o, out)
    {
        return;
    }
    packed_matmul_generic::<T, Widened<S>>(x, d, k, o, out)
}

/// The f32 kernels by intrinsics, when [`SimdLevel::current`] has one; `false` otherwise.
fn packed_matmul_f32<S: Stored<f32>>(x: &[f32], d: &[S], k: usize, o: usize, out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    match SimdLevel::current() {
        // SAFETY: the CPU supports AVX-512F (`current` never exceeds it); shapes asserted inside.
        SimdLevel::Avx512 => unsafe { packed_matmul_avx512::<Widened<S>>(x, d, k, o, out) },
        // SAFETY: the CPU supports AVX2, FMA and F16C (`current` never exceeds it); shapes asserted inside.
        SimdLevel::Avx2Fma => unsafe { packed_matmul_avx2::<S>(x, d, k, o, out) },
        SimdLevel::Baseline => return false,
    }
    cfg!(target_arch = "x86_64")
}

/// The generic [`packed_matmul_body`] for panels of kind K (x (m, depth)), compiled for the level
/// [`SimdLevel::current`] allows.
fn packed_matmul_generic<T: Real, K: PanelRows<T>>(x: &[K::X], d: &[K::D], depth: usize, o: usize, out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<T: Real, K: PanelRows<T>>(x: &[K::X], d: &[K::D], depth: usize, o: usize, out: &mut [T]) {
            packed_matmul_body::<T, K, true, 8>(x, d, depth, o, out)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2_fma<T: Real, K: PanelRows<T>>(x: &[K::X], d: &[K::D], depth: usize, o: usize, out: &mut [T]) {
            packed_matmul_body::<T, K, true, 6>(x, d, depth, o, out)
        }
        match SimdLevel::current() {
            // SAFETY: `current` never exceeds what the CPU supports.
            SimdLevel::Avx512 => return unsafe { avx512::<T, K>(x, d, depth, o, out) },
            // SAFETY: as above.
            SimdLevel::Avx2Fma => return unsafe { avx2_fma::<T, K>(x, d, depth, o, out) },
            SimdLevel::Baseline => {}
        }
    }
    packed_matmul_body::<T, K, false, 3>(x, d, depth, o, out)
}

/// Products of at least this many rows and [`PAR_ROWS_WORK`] multiply–adds split their rows
/// across the threads (each thread then reads all the weights, from its own cache).
const PAR_ROWS: usize = 32;
/// See [`PAR_ROWS`]: 8·[`PAR_WORK`], where a thread's share outweighs its wake-up many times.
const PAR_ROWS_WORK: usize = 8 * PAR_WORK;

/// [`packed_linear_into`] on arrays, its rows split across threads.
#[cfg(test)]
pub(crate) fn packed_linear<T: Real>(x: ArrayView2<T>, w: &PackedMatrix<T>, b: ArrayView1<T>) -> Array2<T> {
    packed_linear_rows(x, w, b, true)
}

/// [`packed_linear_into`] on arrays, its rows split across threads only if `split_rows` is set: a column part
/// of a [`PackedColumns`] product already runs beside the other parts, and a split inside it
/// would run its blocks in turn (nested `nn::pair` calls do), each a pass over the part's
/// weights (the demo verifier over 40 positions: 5.3 ms with, 3.1 ms without).
fn packed_linear_rows<T: Real>(x: ArrayView2<T>, w: &PackedMatrix<T>, b: ArrayView1<T>, split_rows: bool) -> Array2<T> {
    let m = x.nrows();
    let bias = b.as_standard_layout();
    let xs = x.as_standard_layout();
    let mut y = vec![T::zero(); m * w.o];
    packed_linear_into(
        xs.as_slice().expect("standard layout"),
        w,
        bias.as_slice().expect("standard layout"),
        &mut y,
        split_rows,
    );
    Array2::from_shape_vec((m, w.o), y).expect("m rows of o values")
}

/// y = x·W + b with W packed: x (m, k), b (o,) → y (m, o), row-major slices, y a buffer the
/// caller may keep (a recurrent step's, reused from step to step); for the few rows of a
/// decoding step (any m works; beyond a few dozen rows gemm is faster). With `split_rows`, from
/// [`PAR_ROWS`] rows and [`PAR_ROWS_WORK`] multiply–adds, blocks of rows (multiples of 8) run on
/// the threads; each row's sums are the same in any block, so the result does not depend on the
/// thread count.
pub(crate) fn packed_linear_into<T: Real>(xs: &[T], w: &PackedMatrix<T>, bias: &[T], ys: &mut [T], split_rows: bool) {
    let m = xs.len() / w.k.max(1);
    assert!(bias.len() == w.o && xs.len() == m * w.k && ys.len() == m * w.o, "x (m, k), bias (o) and y (m, o)");
    // row copies: an ndarray broadcast assignment costs more than the product at one row
    ys.chunks_exact_mut(w.o.max(1)).for_each(|row| row.copy_from_slice(bias));
    let threads = rayon::current_num_threads();
    if split_rows && threads > 1 && m >= PAR_ROWS && m * w.k * w.o >= PAR_ROWS_WORK {
        let rows = m.div_ceil(threads).next_multiple_of(8);
        if crate::nn::pair::replaces_pool() {
            let (x0, x1) = xs.split_at(rows * w.k);
            let (y0, y1) = ys.split_at_mut(rows * w.o);
            crate::nn::pair::join(|| packed_matmul(x0, w, y0), || packed_matmul(x1, w, y1));
        } else {
            xs.par_chunks(rows * w.k).zip(ys.par_chunks_mut(rows * w.o)).for_each(|(x, y)| packed_matmul(x, w, y));
        }
    } else {
        packed_matmul(xs, w, ys);
    }
}

/// Weights of at least this many values (256 KB in f32) are packed in column parts, one per
/// thread, by [`PackedColumns`]; smaller ones stay whole. With two threads the parts run by
/// [`crate::nn::pair`], whose wake-up costs well under a microsecond: on the 2-vCPU host of the
/// README the committed demo verifier's pass took 0.35 / 0.87 ms over 1 / 9 positions with its
/// 256 × 256 and 256 × 768 weights split, 0.37 / 0.94 ms with them whole.
const SPLIT_VALUES: usize = 1 << 16;
/// With more than two threads, a product runs the parts on rayon's threads when it has at least
/// this many multiply–adds (rows × k × o) or its weights take at least [`SPLIT_BYTES`]; otherwise
/// the calling thread runs them in turn, where a rayon worker's wake-up (20–50 µs on the host of
/// the README) would cost more than its share saves.
const SPLIT_WORK: usize = 1 << 20;
/// See [`SPLIT_WORK`]: weights this large (1.5 MiB) are read faster by all cores even for one row.
const SPLIT_BYTES: usize = 3 << 19;

/// A weight matrix W (k, o) packed for decoding, the kernel behind the transformer's decoding passes
/// and the S4 step's output linear: column panels of 16 (one AVX-512 register of f32) stored
/// k rows deep, in f32 or 16 bits (widened as loaded), in column parts, one per thread when W is
/// large: a product with a few rows then reads the parts' weights on all cores at once (the pass
/// is bound by reading the weights at one row and by the multiply–adds at a few dozen; both are
/// spread). Each part's columns are a whole number of panels. For 1 to 96 rows it is faster than
/// matrixmultiply and the `gemm` crate (`cargo bench -p s4-bench --bench gemm`).
///
/// ```
/// use ndarray::{Array1, Array2};
/// use s4::nn::linear::{linear, PackedColumns};
/// use s4::scalar::HalfPrecision;
///
/// let w = Array2::from_shape_fn((64, 40), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 5.5 - 1.0);
/// let (x, b) = (Array2::from_elem((3, 64), 0.5f32), Array1::from_elem(40, 0.1f32));
/// let packed = PackedColumns::with_precision(w.view(), None);
/// let y = packed.linear(x.view(), b.view()); // (3, 40)
/// let reference = linear(x.view(), w.view(), b.view());
/// assert!(y.iter().zip(&reference).all(|(a, r)| (a - r).abs() < 1e-5));
/// // bf16 panels take half the bytes of f32 ones
/// let half = PackedColumns::with_precision(w.view(), Some(HalfPrecision::Bf16));
/// assert_eq!(2 * half.bytes(), packed.bytes());
/// ```
#[derive(Clone, Debug)]
pub struct PackedColumns<T> {
    /// (first column, the part's packed columns).
    parts: Vec<(usize, PackedMatrix<T>)>,
    o: usize,
}

impl<T: Real> PackedColumns<T> {
    /// Packs `w` (k, o) in as many parts as rayon has threads when it holds at least 2¹⁶ values
    /// (256 KB in f32), else whole; the values rounded to `precision` if given.
    pub fn with_precision(w: ArrayView2<T>, precision: Option<HalfPrecision>) -> Self {
        Self::with_matmul(w, precision, MatmulPrecision::Highest)
    }

    /// [`with_precision`](Self::with_precision) for products in the arithmetic `matmul`:
    /// [`MatmulPrecision::Medium`] stores bf16 pairs (whatever `precision` says) and rounds the
    /// activations to bf16 too.
    ///
    /// ```
    /// use ndarray::{Array1, Array2};
    /// use s4::nn::linear::{linear, PackedColumns};
    /// use s4::scalar::MatmulPrecision;
    ///
    /// let w = Array2::from_shape_fn((64, 40), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 5.5 - 1.0);
    /// let (x, b) = (Array2::from_elem((3, 64), 0.3f32), Array1::zeros(40));
    /// let medium = PackedColumns::with_matmul(w.view(), None, MatmulPrecision::Medium);
    /// let y = medium.linear(x.view(), b.view());
    /// // bf16 activations and weights: within a few 2⁻⁸ of the f32 products
    /// let exact = linear(x.view(), w.view(), b.view());
    /// assert!(y.iter().zip(&exact).all(|(a, e)| (a - e).abs() < 0.1));
    /// assert_eq!(2 * medium.bytes(), 64 * 48 * 4); // 16-bit values (40 columns in 3 panels of 16)
    /// ```
    pub fn with_matmul(w: ArrayView2<T>, precision: Option<HalfPrecision>, matmul: MatmulPrecision) -> Self {
        Self::in_parts(w, precision, matmul, rayon::current_num_threads())
    }

    /// [`with_matmul`](Self::with_matmul) in at most `threads` parts (one below [`SPLIT_VALUES`]).
    fn in_parts(w: ArrayView2<T>, precision: Option<HalfPrecision>, matmul: MatmulPrecision, threads: usize) -> Self {
        let (k, o) = w.dim();
        let threads = if k * o >= SPLIT_VALUES { threads } else { 1 };
        let panels = o.div_ceil(PANEL);
        let per_part = panels.div_ceil(threads.clamp(1, panels.max(1))).max(1) * PANEL;
        let parts = (0..o)
            .step_by(per_part)
            .map(|c0| {
                let part = w.slice(ndarray::s![.., c0..(c0 + per_part).min(o)]);
                (c0, PackedMatrix::with_matmul(part, precision, matmul))
            })
            .collect();
        PackedColumns { parts, o }
    }

    /// The bytes its values take.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|(_, p)| p.bytes()).sum()
    }

    /// y = x·W + b: x (m, k), b (o,) → (m, o). Two parts run side by side by
    /// the crate's `nn::pair` fork–join; more parts run on rayon's threads for products of 2²⁰ or more
    /// multiply–adds or weights of 1.5 MiB or more, else in turn (each row's sums are the same
    /// either way).
    pub fn linear(&self, x: ArrayView2<T>, b: ArrayView1<T>) -> Array2<T> {
        self.linear_then(x, b, |_| {})
    }

    /// [`linear`](Self::linear) followed by an elementwise function `then` (e.g. the activation
    /// after a transformer's first MLP linear), applied to each part's rows on the thread that
    /// computed them (its argument: some output rows of some columns, row-major).
    pub fn linear_then(&self, x: ArrayView2<T>, b: ArrayView1<T>, then: impl Fn(&mut [T]) + Sync) -> Array2<T> {
        // a lone part may split its rows across the threads; parts beside each other may not
        let single_part = self.parts.len() == 1;
        let part_linear = |(c0, part): &(usize, PackedMatrix<T>)| {
            let mut y = packed_linear_rows(x, part, b.slice(ndarray::s![*c0..*c0 + part.o]), single_part);
            then(y.as_slice_mut().expect("a fresh array"));
            y
        };
        if let [whole] = &self.parts[..] {
            return part_linear(whole);
        }
        let mut y = Array2::<T>::zeros((x.nrows(), self.o));
        // each part's thread copies its columns into the output, while they are in its cache
        let into = |part: &(usize, PackedMatrix<T>), mut cols: ndarray::ArrayViewMut2<T>| {
            for (mut row, part_row) in cols.rows_mut().into_iter().zip(part_linear(part).rows()) {
                row.as_slice_mut()
                    .expect("a row of contiguous columns")
                    .copy_from_slice(part_row.to_slice().expect("owned"));
            }
        };
        // the output's columns, one view per part
        let mut views = Vec::with_capacity(self.parts.len());
        let mut rest = y.view_mut();
        for (_, part) in &self.parts[..self.parts.len() - 1] {
            let (cols, after) = rest.split_at(Axis(1), part.o);
            views.push(cols);
            rest = after;
        }
        views.push(rest);
        let mut jobs: Vec<_> = self.parts.iter().zip(views).collect();
        if let [(first, left), (second, right)] = &mut jobs[..] {
            let (left, right) = (left.view_mut(), right.view_mut());
            crate::nn::pair::join(|| into(first, left), || into(second, right));
        } else if x.nrows() * x.ncols() * self.o >= SPLIT_WORK || self.bytes() >= SPLIT_BYTES {
            jobs.into_par_iter().for_each(|(part, cols)| into(part, cols));
        } else {
            jobs.into_iter().for_each(|(part, cols)| into(part, cols));
        }
        y
    }
}

/// A two-layer MLP y = f(x·W₁ + b₁)·W₂ + b₂ (f elementwise) packed for decoding, its hidden units
/// split in two halves as Megatron-LM splits them across devices (Shoeybi et al. 2019, §3): part
/// t holds W₁'s columns and W₂'s rows of its hidden units, so its thread computes its hidden values
/// and their share of y from its own cache. One fork–join covers the MLP, where splitting each
/// linear by output columns ([`PackedColumns`]) takes two and passes every hidden value from one
/// core to the other (with bf16 products the conversion of those values, the first to touch
/// them, took 10% of a demo verifier's pass over 8 positions). y = (b₂ + part 0's share) + part
/// 1's share, whatever the number of threads (one thread runs the parts in turn), so a row's
/// result depends neither on the rows beside it nor on the threads. An MLP whose W₁ holds fewer
/// than 2¹⁶ values stays whole, as [`PackedColumns`] does.
#[derive(Clone, Debug)]
pub struct PackedMlp<T> {
    /// (first hidden unit, W₁'s columns, W₂'s rows) per part.
    parts: Vec<(usize, PackedColumns<T>, PackedColumns<T>)>,
    o: usize,
}

impl<T: Real> PackedMlp<T> {
    /// Packs W₁ (k, hidden) and W₂ (hidden, o) for products in the arithmetic `matmul`, the values
    /// rounded to `precision` if given (as [`PackedColumns::with_matmul`]).
    ///
    /// # Panics
    /// If W₂ does not have W₁'s hidden width as rows.
    pub fn with_matmul(
        w1: ArrayView2<T>,
        w2: ArrayView2<T>,
        precision: Option<HalfPrecision>,
        matmul: MatmulPrecision,
    ) -> Self {
        let (k, hidden) = w1.dim();
        assert_eq!(w2.nrows(), hidden, "W2 has the hidden width as rows");
        // halves at a panel boundary (an even row of W2, as bf16 pairs need)
        let cut = (hidden / 2).next_multiple_of(PANEL);
        let bounds = if k * hidden >= SPLIT_VALUES && cut < hidden { vec![0, cut, hidden] } else { vec![0, hidden] };
        // the threads shared between the halves, each half's products split by columns among its own
        let threads = rayon::current_num_threads().div_ceil(bounds.len() - 1);
        let parts = bounds
            .windows(2)
            .map(|r| {
                let (a, b) = (r[0], r[1]);
                let first = PackedColumns::in_parts(w1.slice(ndarray::s![.., a..b]), precision, matmul, threads);
                let second = PackedColumns::in_parts(w2.slice(ndarray::s![a..b, ..]), precision, matmul, threads);
                (a, first, second)
            })
            .collect();
        PackedMlp { parts, o: w2.ncols() }
    }

    /// The bytes its values take.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|(_, a, b)| a.bytes() + b.bytes()).sum()
    }

    /// y = f(x·W₁ + b₁)·W₂ + b₂: x (m, k), b₁ (hidden,), b₂ (o,) → (m, o), `f` applied in place to
    /// each part's hidden values (some rows of some of its units, row-major) on the thread that
    /// computed them.
    pub fn forward(
        &self,
        x: ArrayView2<T>,
        b1: ArrayView1<T>,
        b2: ArrayView1<T>,
        f: impl Fn(&mut [T]) + Sync,
    ) -> Array2<T> {
        let zeros = Array1::<T>::zeros(self.o);
        // part t's share of y, b2 the first part's initial value
        let share = |(a, first, second): &(usize, PackedColumns<T>, PackedColumns<T>)| {
            let hidden = first.linear_then(x, b1.slice(ndarray::s![*a..*a + first.o]), &f);
            second.linear(hidden.view(), if *a == 0 { b2 } else { zeros.view() })
        };
        match &self.parts[..] {
            [only] => share(only),
            [first, second] => {
                let (y, other) = crate::nn::pair::join(|| share(first), || share(second));
                y + other
            }
            _ => unreachable!("one or two parts"),
        }
    }
}

/// Backward of [`linear`]: dx = dy·Wᵀ, dW = xᵀ·dy, db = Σ_rows dy. Returns (dx, dW, db).
pub fn linear_backward<T: Real>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    dy: ArrayView2<T>,
) -> (Array2<T>, Array2<T>, Array1<T>) {
    let mut dx = Array2::<T>::zeros((dy.nrows(), w.nrows()));
    general_mat_mul(T::one(), &dy, &w.t(), T::zero(), &mut dx);
    let mut dw = Array2::<T>::zeros(w.dim());
    general_mat_mul(T::one(), &x.t(), &dy, T::zero(), &mut dw);
    (dx, dw, col_sums(dy))
}

/// `y[b] = W x[b] + bias` over the feature axis of a (B, F, L) sequence: W (O, F), bias (O,) →
/// (B, O, L) (the S4 layer's output linear, the S4 models' encoder and decoder), one gemm per
/// sequence with the bias as its initial value, sequences in parallel when each is worth a thread.
///
/// # Panics
/// If W is not (O, F) or bias not (O,).
pub fn linear_features<T: Real>(x: ArrayView3<T>, w: ArrayView2<T>, bias: ArrayView1<T>) -> Array3<T> {
    let (b, f, l) = x.dim();
    assert_eq!(w.ncols(), f, "linear_features: W must be (O, F)");
    assert_eq!(bias.len(), w.nrows(), "linear_features: bias must be (O,)");
    let mut y = Array3::<T>::zeros((b, w.nrows(), l));
    let one = |(mut yb, xb): (ndarray::ArrayViewMut2<T>, ArrayView2<T>)| {
        for (mut row, &bv) in yb.outer_iter_mut().zip(bias.iter()) {
            row.fill(bv);
        }
        general_mat_mul(T::one(), &w, &xb, T::one(), &mut yb);
    };
    // one sequence of a recurrent step is far below what a thread hand-off costs
    if b > 1 && w.len() * l >= PAR_WORK {
        y.axis_iter_mut(Axis(0)).into_par_iter().zip(x.axis_iter(Axis(0))).for_each(one);
    } else {
        y.axis_iter_mut(Axis(0)).zip(x.axis_iter(Axis(0))).for_each(one);
    }
    y
}

/// Columns per block of [`linear_glu_features`]: the block's z (2H × 256 values, 512 KiB in f32
/// at H = 256) stays in cache between the gemm that writes it and the GLU that reads it.
const GLU_BLOCK: usize = 256;

/// GLU after a linear map on one (F, L) sequence, fused: `out = GLU(W x + bias)` with W (2H, F),
/// bias (2H,), out (H, L), i.e. `out[j, t] = z[j, t]·σ(z[H + j, t])` for z = W x + bias (the S4
/// layer's output linear and GLU). z is computed 256 columns at a time into one reused
/// buffer and gated straight into `out`, so the (2H, L) z is never allocated or written out.
/// Equal to [`linear_features`] then [`glu_features`](super::glu_features).
///
/// # Panics
/// If W is not (2·out rows, F), bias not (2·out rows,), or the lengths differ.
pub fn linear_glu_features<T: Real>(
    x: ArrayView2<T>,
    w: ArrayView2<T>,
    bias: ArrayView1<T>,
    mut out: ArrayViewMut2<T>,
) {
    let (f, l) = x.dim();
    let h = out.nrows();
    assert!(w.dim() == (2 * h, f) && bias.len() == 2 * h && out.ncols() == l, "linear_glu_features: shapes");
    let mut z = Array2::<T>::zeros((2 * h, GLU_BLOCK.min(l)));
    for t0 in (0..l).step_by(GLU_BLOCK) {
        let n = GLU_BLOCK.min(l - t0);
        let mut zb = z.slice_mut(ndarray::s![.., ..n]);
        for (mut row, &bv) in zb.outer_iter_mut().zip(bias.iter()) {
            row.fill(bv);
        }
        general_mat_mul(T::one(), &w, &x.slice(ndarray::s![.., t0..t0 + n]), T::one(), &mut zb);
        for j in 0..h {
            let (a, g) = (zb.row(j), zb.row(h + j));
            let mut o = out.slice_mut(ndarray::s![j, t0..t0 + n]);
            match (a.as_slice(), g.as_slice(), o.as_slice_mut()) {
                (Some(a), Some(g), Some(o)) => super::glu_in_place(a, g, o),
                _ => {
                    for ((o, &a), &g) in o.iter_mut().zip(a.iter()).zip(g.iter()) {
                        *o = a * super::sigmoid(g);
                    }
                }
            }
        }
    }
}

/// Backward of [`linear_features`]: gx = Wᵀ gy, gW = Σ_b gy_b x_bᵀ, gbias = Σ_{b,t} gy (the
/// per-sequence parts summed in sequence order: thread-count independent).
pub fn linear_features_backward<T: Real>(
    x: ArrayView3<T>,
    w: ArrayView2<T>,
    gy: ArrayView3<T>,
) -> (Array3<T>, Array2<T>, Array1<T>) {
    let (b, f, l) = x.dim();
    let o = w.nrows();
    let mut gx = Array3::<T>::zeros((b, f, l));
    let parts: Vec<(Array2<T>, Array1<T>)> = gx
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(x.axis_iter(Axis(0)))
        .zip(gy.axis_iter(Axis(0)))
        .map(|((mut gxb, xb), gyb)| {
            general_mat_mul(T::one(), &w.t(), &gyb, T::zero(), &mut gxb);
            let mut gw = Array2::<T>::zeros((o, f));
            general_mat_mul(T::one(), &gyb, &xb.t(), T::zero(), &mut gw);
            (gw, gyb.sum_axis(Axis(1)))
        })
        .collect();
    let mut gw = Array2::<T>::zeros((o, f));
    let mut gb = Array1::<T>::zeros(o);
    for (w, b) in parts {
        gw += &w;
        gb += &b;
    }
    (gx, gw, gb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::simd::with_simd_level;

    /// The packed kernel at every SIMD level this CPU runs, for every row count from 1 to 96 and
    /// widths with partial panels: equal to the direct sums (f64), and each row bit-identical
    /// whatever the number of rows computed with it (the decoding passes rely on it).
    #[test]
    fn packed_linear_matches_direct_sums_for_every_row_count_and_level() {
        let (k, o) = (37, 45);
        let w = Array2::from_shape_fn((k, o), |(i, j)| ((i * 31 + j * 17) % 23) as f32 / 11.7 - 1.0);
        let b = Array1::from_shape_fn(o, |j| j as f32 * 0.01);
        let x = Array2::from_shape_fn((96, k), |(r, i)| ((r * 13 + i * 7) % 19) as f32 / 9.5 - 1.0);
        // 16-bit storage: the same sums over the weights rounded to the format
        for precision in [None, Some(HalfPrecision::Bf16), Some(HalfPrecision::F16)] {
            let packed = PackedMatrix::with_precision(w.view(), precision);
            let stored = w.mapv(|v| precision.map_or(v, |p| p.round(v)));
            if precision.is_some() {
                assert!(stored != w, "the test weights are not all representable in 16 bits");
                assert_eq!(packed.bytes(), o.div_ceil(PANEL) * PANEL * k * 2);
            }
            for level in SimdLevel::available() {
                with_simd_level(level, || {
                    let one_by_one: Vec<Array2<f32>> =
                        (0..96).map(|r| packed_linear(x.slice(ndarray::s![r..r + 1, ..]), &packed, b.view())).collect();
                    for m in 1..=96 {
                        let y = packed_linear(x.slice(ndarray::s![..m, ..]), &packed, b.view());
                        for r in 0..m {
                            for j in 0..o {
                                let exact: f64 =
                                    b[j] as f64 + (0..k).map(|i| x[[r, i]] as f64 * stored[[i, j]] as f64).sum::<f64>();
                                let at = format!("{precision:?}, {level}, m = {m}, ({r}, {j})");
                                assert!((y[[r, j]] as f64 - exact).abs() < 1e-4, "{at}");
                                assert_eq!(y[[r, j]].to_bits(), one_by_one[r][[0, j]].to_bits(), "{at}");
                            }
                        }
                    }
                });
            }
            // f64 passes over 16-bit weights (the generic kernel)
            let (w64, x64, b64) = (w.mapv(f64::from), x.mapv(f64::from), b.mapv(f64::from));
            let y = packed_linear(x64.view(), &PackedMatrix::with_precision(w64.view(), precision), b64.view());
            let exact = x64.dot(&stored.mapv(f64::from)) + &b64;
            assert!(y.iter().zip(&exact).all(|(a, e)| (a - e).abs() < 1e-12), "{precision:?} in f64");
        }
    }

    /// [`MatmulPrecision::Medium`] products at every SIMD level this CPU runs (`vdpbf16ps` at the
    /// AVX-512 level where the CPU has AVX512-BF16), for every row count from 1 to 96, an odd k and
    /// partial panels: bit-identical to the instruction's sums written out in scalar f32
    /// (acc + x₂ᵢ₊₁·w₂ᵢ₊₁, then + x₂ᵢ·w₂ᵢ, bf16 inputs, subnormal inputs as zeros), whatever the rows
    /// computed with it; in f64, within rounding of the exact sums of the bf16 values.
    #[test]
    fn bf16_products_sum_as_vdpbf16ps_at_every_level_and_row_count() {
        let (k, o) = (37, 45);
        let w = Array2::from_shape_fn((k, o), |(i, j)| ((i * 31 + j * 17) % 23) as f32 / 11.7 - 1.0);
        let b = Array1::from_shape_fn(o, |j| j as f32 * 0.01);
        let mut x = Array2::from_shape_fn((96, k), |(r, i)| ((r * 13 + i * 7) % 19) as f32 / 9.5 - 1.0);
        x[[5, 3]] = 3e-39; // a bf16 subnormal: read as zero
        x[[6, 4]] = -1e-40;
        let packed = PackedMatrix::with_matmul(w.view(), None, MatmulPrecision::Medium);
        assert_eq!(packed.bytes(), o.div_ceil(PANEL) * PANEL * k.div_ceil(2) * 4);
        let bf = |v: f32| f32::from_bits(bf16_bits(v) << 16);
        assert_eq!(bf(3e-39), 0.0);
        let reference = |r: usize, j: usize| {
            let (xr, wj) = (
                |i: usize| if i < k { bf(x[[r, i]]) } else { 0.0 },
                |i: usize| if i < k { bf(w[[i, j]]) } else { 0.0 },
            );
            (0..k.div_ceil(2)).fold(b[j], |acc, i| (acc + xr(2 * i + 1) * wj(2 * i + 1)) + xr(2 * i) * wj(2 * i))
        };
        for level in SimdLevel::available() {
            with_simd_level(level, || {
                for m in 1..=96 {
                    let y = packed_linear(x.slice(ndarray::s![..m, ..]), &packed, b.view());
                    for r in 0..m {
                        for j in 0..o {
                            assert_eq!(y[[r, j]].to_bits(), reference(r, j).to_bits(), "{level}, m = {m}, ({r}, {j})");
                        }
                    }
                }
            });
        }
        let (w64, x64, b64) = (w.mapv(f64::from), x.mapv(f64::from), b.mapv(f64::from));
        let packed64 = PackedMatrix::with_matmul(w64.view(), None, MatmulPrecision::Medium);
        let y = packed_linear(x64.view(), &packed64, b64.view());
        let exact = x.mapv(|v| f64::from(bf(v))).dot(&w.mapv(|v| f64::from(bf(v)))) + &b64;
        assert!(y.iter().zip(&exact).all(|(a, e)| (a - e).abs() < 1e-12), "f64 sums of bf16 values");
    }

    /// Weights whose values are all bf16 values are packed in bf16 unasked: half the bytes, and
    /// every product bit-identical to f32 panels of the same values at every SIMD level; one value
    /// off the bf16 grid keeps f32 panels.
    #[test]
    fn bf16_valued_weights_are_packed_in_bf16_losslessly() {
        let (k, o) = (37, 45);
        let w = Array2::from_shape_fn((k, o), |(i, j)| {
            HalfPrecision::Bf16.round(((i * 31 + j * 17) % 23) as f32 / 11.7 - 1.0)
        });
        let x = Array2::from_shape_fn((9, k), |(r, i)| ((r * 13 + i * 7) % 19) as f32 / 9.5 - 1.0);
        let b = Array1::from_shape_fn(o, |j| j as f32 * 0.01);
        let auto = PackedMatrix::with_precision(w.view(), None);
        assert_eq!(auto.bytes(), o.div_ceil(PANEL) * PANEL * k * 2);
        let full = PackedMatrix { k, o, panels: Panels::Full(pack(w.view())) };
        for level in SimdLevel::available() {
            with_simd_level(level, || {
                for m in 1..=9 {
                    let xm = x.slice(ndarray::s![..m, ..]);
                    let (a, f) = (packed_linear(xm, &auto, b.view()), packed_linear(xm, &full, b.view()));
                    assert!(a.iter().zip(&f).all(|(a, f)| a.to_bits() == f.to_bits()), "{level}, m = {m}");
                }
            });
        }
        let mut off = w.clone();
        off[[3, 4]] += 1e-3;
        assert_eq!(PackedMatrix::with_precision(off.view(), None).bytes(), o.div_ceil(PANEL) * PANEL * k * 4);
    }

    /// The MLP split by hidden units: two parts at these sizes, the direct sums (f64) with f32
    /// products, each row's bits whatever the rows beside it and in pools of one and four threads
    /// (where each half splits its products by columns), with both arithmetics of the products.
    #[test]
    fn packed_mlp_halves_equal_the_direct_sums_row_by_row() {
        let (k, hidden, o) = (128, 1040, 136);
        let w1 = Array2::from_shape_fn((k, hidden), |(i, j)| ((i * 31 + j * 17) % 23) as f32 / 46.0 - 0.25);
        let w2 = Array2::from_shape_fn((hidden, o), |(i, j)| ((i * 13 + j * 29) % 19) as f32 / 76.0 - 0.125);
        let b1 = Array1::from_shape_fn(hidden, |j| (j % 7) as f32 * 0.01 - 0.03);
        let b2 = Array1::from_shape_fn(o, |j| j as f32 * 0.01);
        let x = Array2::from_shape_fn((9, k), |(r, i)| ((r * 13 + i * 7) % 19) as f32 / 9.5 - 1.0);
        let f = |v: &mut [f32]| v.iter_mut().for_each(|y| *y = y.tanh());
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let four_threads = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        for matmul in [MatmulPrecision::Highest, MatmulPrecision::Medium] {
            let mlp = PackedMlp::with_matmul(w1.view(), w2.view(), None, matmul);
            assert_eq!(mlp.parts.len(), 2);
            let y = mlp.forward(x.view(), b1.view(), b2.view(), f);
            for r in 0..9 {
                let alone = mlp.forward(x.slice(ndarray::s![r..r + 1, ..]), b1.view(), b2.view(), f);
                assert!(alone.iter().zip(y.row(r)).all(|(a, b)| a.to_bits() == b.to_bits()), "{matmul:?} row {r}");
            }
            let serial = one_thread.install(|| mlp.forward(x.view(), b1.view(), b2.view(), f));
            assert!(serial.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{matmul:?}: threads");
            // with four threads each half splits its products by columns: the same bits
            let wide = four_threads.install(|| {
                let mlp = PackedMlp::with_matmul(w1.view(), w2.view(), None, matmul);
                assert!(mlp.parts.iter().all(|(_, a, b)| a.parts.len() == 2 && b.parts.len() == 2));
                mlp.forward(x.view(), b1.view(), b2.view(), f)
            });
            assert!(wide.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{matmul:?}: four threads");
            // the direct sums
            let x64 = x.mapv(f64::from);
            let h = (x64.dot(&w1.mapv(f64::from)) + b1.mapv(f64::from)).mapv(f64::tanh);
            let exact = h.dot(&w2.mapv(f64::from)) + b2.mapv(f64::from);
            let worst = y.iter().zip(&exact).fold(0.0f64, |m, (&a, &e)| m.max((f64::from(a) - e).abs()));
            let bound = if matmul == MatmulPrecision::Highest { 1e-4 } else { 0.2 };
            assert!(worst < bound, "{matmul:?}: {worst}");
        }
    }

    /// Products large enough to split their rows across threads give each row bit-identical to
    /// the row computed alone, at every row count around the split and in a one-thread pool.
    #[test]
    fn packed_linear_row_split_is_bit_identical() {
        let (k, o) = (256, 150);
        let w = Array2::from_shape_fn((k, o), |(i, j)| ((i * 31 + j * 17) % 23) as f32 / 11.7 - 1.0);
        let b = Array1::from_shape_fn(o, |j| j as f32 * 0.01);
        let x = Array2::from_shape_fn((45, k), |(r, i)| ((r * 13 + i * 7) % 19) as f32 / 9.5 - 1.0);
        for precision in [None, Some(HalfPrecision::Bf16)] {
            let packed = PackedMatrix::with_precision(w.view(), precision);
            let alone: Vec<Array2<f32>> =
                (0..45).map(|r| packed_linear(x.slice(ndarray::s![r..r + 1, ..]), &packed, b.view())).collect();
            let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            for m in [PAR_ROWS - 1, PAR_ROWS, 33, 40, 45] {
                assert!(m < PAR_ROWS || m * k * o >= PAR_ROWS_WORK, "m = {m} does not split");
                let xm = x.slice(ndarray::s![..m, ..]);
                let split = packed_linear(xm, &packed, b.view());
                let whole = one_thread.install(|| packed_linear(xm, &packed, b.view()));
                for r in 0..m {
                    for j in 0..o {
                        assert_eq!(
                            split[[r, j]].to_bits(),
                            alone[r][[0, j]].to_bits(),
                            "{precision:?} m = {m} ({r}, {j})"
                        );
                        assert_eq!(
                            whole[[r, j]].to_bits(),
                            split[[r, j]].to_bits(),
                            "{precision:?} m = {m} ({r}, {j})"
                        );
                    }
                }
            }
        }
    }
}
