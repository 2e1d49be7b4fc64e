//! Fused CPU f32 kernels for the hot elementwise work of the diffusion models: softmax
//! attention, SiLU (after group norm) and GELU (GEGLU). Their transcendental functions are
//! branch-free polynomials that the compiler vectorises; on x86-64 the loops are compiled a
//! second time with AVX2 + FMA and picked at run time.
//!
//! Accuracy: `exp` is the Cephes `expf` polynomial (≈1 ulp); `erf` is Abramowitz & Stegun
//! 7.1.26 (≤ 1.5e-7 in exact arithmetic, ≤ 6e-7 evaluated in f32), the formula PyTorch's
//! vectorised CPU `erf` (and therefore its exact-GELU kernel) uses.

use candle_core::{CpuStorage, Layout, Shape};
use rayon::prelude::*;

/// Runs `$body` compiled for AVX2 + FMA when the CPU has them, else generically.
macro_rules! multiversion {
    (fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        #[inline(always)]
        fn generic($($arg: $ty),*) $body

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2($($arg: $ty),*) {
            generic($($arg),*)
        }

        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::cpu_kernels::has_avx2_fma() {
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// `exp(x)` for `x` in about [-87, 88] (clamped), Cephes polynomial.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693359375;
    const C2: f32 = -2.12194440e-4;
    // max/min (not clamp) so that NaN becomes a finite value: `n` below must be in range.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-C1, x);
    let r = n.mul_add(-C2, r);
    let mut y = 1.9875691500E-4f32;
    y = y.mul_add(r, 1.3981999507E-3);
    y = y.mul_add(r, 8.3334519073E-3);
    y = y.mul_add(r, 4.1665795894E-2);
    y = y.mul_add(r, 1.6666665459E-1);
    y = y.mul_add(r, 5.0000001201E-1);
    let y = y.mul_add(r * r, r) + 1.0;
    // SAFETY: |x| <= 88, so n is an integer in [-126, 127] (a plain `as` would saturate, which
    // does not vectorise).
    let ni = unsafe { n.to_int_unchecked::<i32>() };
    let pow2n = f32::from_bits(((ni + 127) as u32) << 23);
    y * pow2n
}

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (as PyTorch's `Vectorized<float>::erf`).
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.3275911;
    const A1: f32 = 0.254829592;
    const A2: f32 = -0.284496736;
    const A3: f32 = 1.421413741;
    const A4: f32 = -1.453152027;
    const A5: f32 = 1.061405429;
    let sign = x.to_bits() & 0x8000_0000;
    let ax = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let t = 1.0 / P.mul_add(ax, 1.0);
    let mut r = A5.mul_add(t, A4);
    r = r.mul_add(t, A3);
    r = r.mul_add(t, A2);
    r = r.mul_add(t, A1);
    let e = exp_f32(-ax * ax);
    let y = (-r * t).mul_add(e, 1.0);
    f32::from_bits(y.to_bits() | sign)
}

#[inline(always)]
pub fn silu_f32(v: f32) -> f32 {
    v / (1.0 + exp_f32(-v))
}

#[inline(always)]
pub fn gelu_f32(v: f32) -> f32 {
    v * 0.5 * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d[i] = silu(s[i] * scale + shift)` (or without the SiLU).
pub mod affine_act {
    multiversion! {
        fn run(d: &mut [f32], s: &[f32], scale: f32, shift: f32, silu: bool) {
            if silu {
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = super::silu_f32(s * scale + shift);
                }
            } else {
                for (d, &s) in d.iter_mut().zip(s) {
                    *d = s * scale + shift;
                }
            }
        }
    }
}

/// In place: `row = exp(row * scale - max(row) * scale)` (unnormalised softmax); writes the
/// row's sum to `sum`.
pub mod softmax_row {
    multiversion! {
        fn run(row: &mut [f32], scale: f32, sum: &mut f32) {
            let mut m = [f32::NEG_INFINITY; 8];
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                for i in 0..8 {
                    m[i] = if c[i] > m[i] { c[i] } else { m[i] };
                }
            }
            let mut max = m.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            for &v in chunks.remainder() {
                max = max.max(v);
            }
            let shift = max * scale;
            let mut acc = [0f32; 8];
            let mut chunks = row.chunks_exact_mut(8);
            for c in &mut chunks {
                for i in 0..8 {
                    let e = super::exp_f32(c[i].mul_add(scale, -shift));
                    c[i] = e;
                    acc[i] += e;
                }
            }
            let mut total: f32 = acc.iter().sum();
            for v in chunks.into_remainder() {
                let e = super::exp_f32(v.mul_add(scale, -shift));
                *v = e;
                total += e;
            }
            *sum = total;
        }
    }
}

/// GEGLU: `out[r, j] = p[r, j] * gelu(p[r, inner + j])`.
pub mod geglu_rows {
    multiversion! {
        fn run(out: &mut [f32], p: &[f32], inner: usize) {
            for (o, row) in out.chunks_exact_mut(inner).zip(p.chunks_exact(2 * inner)) {
                let (h, g) = row.split_at(inner);
                for ((o, &h), &g) in o.iter_mut().zip(h).zip(g) {
                    *o = h * super::gelu_f32(g);
                }
            }
        }
    }
}

/// The f32 data of a contiguous CPU tensor (the custom ops here take no other).
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v,
        _ => candle_core::bail!("{what} must be f32"),
    };
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))?;
    Ok(&v[a..b])
}

/// GEGLU on the last dimension (`(..., 2 * inner)` → `(..., inner)`).
pub struct GegluOp;

impl candle_core::CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = f32_slice(s, l, "geglu input")?;
        let dims = l.shape().dims();
        let two_inner = *dims.last().unwrap_or(&0);
        let inner = two_inner / 2;
        let rows = p.len() / two_inner.max(1);
        let mut out = vec![0f32; rows * inner];
        let rows_per_task = (16384 / inner.max(1)).max(1);
        out.par_chunks_mut(rows_per_task * inner)
            .zip(p.par_chunks(rows_per_task * two_inner))
            .for_each(|(o, p)| geglu_rows::run(o, p, inner));
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = inner;
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// An output buffer shared by parallel tasks that each write a disjoint region.
pub(crate) struct SendPtr(pub(crate) *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Single-threaded `dst = lhs · rhs` (`dst += lhs · rhs` with `accumulate`) in f32: `dst` is
/// `m × n`, `lhs` `m × k`, `rhs` `k × n`; `dst` and `lhs` have contiguous rows (row strides
/// given), `rhs` any (column, row) strides. Single-threaded because the callers already run
/// one gemm per rayon task (no nested thread pools).
///
/// # Safety
/// The pointers must cover the matrices their shapes and strides describe, and `dst` must not
/// overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_cs: usize,
    rhs_rs: usize,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0f32 } else { 0.0f32 },
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Scaled dot-product attention `softmax(q kᵀ * scale) v` on `(bh, n, d)`, `(bh, m, d)`,
/// `(bh, m, dv)`, in blocks of query rows (scores of one block stay in cache; no `n × m`
/// matrix is ever allocated).
pub struct AttentionOp {
    pub scale: f32,
}

impl candle_core::CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention-fused"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = f32_slice(sq, lq, "attention q")?;
        let k = f32_slice(sk, lk, "attention k")?;
        let v = f32_slice(sv, lv, "attention v")?;
        let (bh, n, d) = lq.shape().dims3()?;
        let (bh_k, m, d_k) = lk.shape().dims3()?;
        let (bh_v, m_v, dv) = lv.shape().dims3()?;
        if bh_k != bh || bh_v != bh || d_k != d || m_v != m {
            candle_core::bail!(
                "attention: shapes q {:?} k {:?} v {:?} do not fit",
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        let mut out = vec![0f32; bh * n * dv];
        // About 64K scores per block (256 KiB).
        let rows = (65536 / m.max(1)).max(32).min(n.max(1));
        let blocks = n.div_ceil(rows);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let scale = self.scale;
        (0..bh * blocks).into_par_iter().for_each_init(
            || vec![0f32; rows * m],
            |scores, unit| {
                let h = unit / blocks;
                let r0 = (unit % blocks) * rows;
                let r = rows.min(n - r0);
                let qb = &q[(h * n + r0) * d..];
                let kh = &k[h * m * d..];
                let vh = &v[h * m * dv..];
                let s = &mut scores[..r * m];
                // s (r × m) = q_block (r × d) · kᵀ (d × m)
                // SAFETY: the slices hold the blocks; `s` is this task's own buffer.
                unsafe {
                    gemm_serial(
                        r,
                        m,
                        d,
                        s.as_mut_ptr(),
                        m,
                        false,
                        qb.as_ptr(),
                        d,
                        kh.as_ptr(),
                        d,
                        1,
                    );
                }
                let mut sums = [0f32; 1];
                let mut inv = Vec::with_capacity(r);
                for row in s.chunks_exact_mut(m) {
                    softmax_row::run(row, scale, &mut sums[0]);
                    inv.push(1.0 / sums[0]);
                }
                // SAFETY: each unit writes its own rows of `out`.
                let ob = unsafe { out_ptr.get().add((h * n + r0) * dv) };
                unsafe {
                    // o_block (r × dv) = p (r × m) · v (m × dv)
                    gemm_serial(r, dv, m, ob, dv, false, s.as_ptr(), m, vh.as_ptr(), 1, dv);
                    // Normalise the rows of the output instead of the probabilities.
                    let o = std::slice::from_raw_parts_mut(ob, r * dv);
                    for (row, &f) in o.chunks_exact_mut(dv).zip(&inv) {
                        for v in row {
                            *v *= f;
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((bh, n, dv))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_accuracy() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-3;
            let e = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let x = i as f32 * 5e-5;
            worst_erf = worst_erf.max((erf_f32(x) as f64 - libm_erf(x as f64)).abs());
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 6e-7, "erf absolute error {worst_erf}");
        // Out-of-range and NaN inputs stay finite (the int conversion must not overflow).
        assert!(exp_f32(f32::NAN).is_finite());
        assert_eq!(exp_f32(-1e9), exp_f32(-87.0));
        assert!(exp_f32(1e9).is_finite());
    }

    fn libm_erf(x: f64) -> f64 {
        candle_core::cpu::erf::erf_f64(x)
    }
}
