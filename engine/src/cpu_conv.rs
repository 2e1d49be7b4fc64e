//! A CPU f32 2-D convolution (NCHW, square kernel, no dilation / groups) that is much faster
//! than candle's generic one for the small-channel, large-image convs of diffusion models:
//! the output is cut into row bands; each band builds its im2col block with row-wise copies
//! (cache-friendly, no per-element index math) and multiplies it by the weight matrix with
//! `gemm`, writing straight into the NCHW output with the bias pre-filled. Bands run in
//! parallel on rayon, each gemm single-threaded (no nested thread pools).

use candle_core::{CpuStorage, Layout, Shape};
use rayon::prelude::*;

use super::cpu_kernels::{SendPtr, f32_slice, gemm_serial};

/// Target size of one band's im2col block (floats): about 1 MiB, to stay in cache.
const BAND_FLOATS: usize = 256 * 1024;

pub struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
}

impl Conv2dOp {
    /// `input (b, c, h, w)`, `weight (cout, c, k, k)`, `bias (cout)`.
    pub fn run(
        &self,
        input: (&CpuStorage, &Layout),
        weight: (&CpuStorage, &Layout),
        bias: (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(input.0, input.1, "conv2d: input")?;
        let w = f32_slice(weight.0, weight.1, "conv2d: weight")?;
        let bias = f32_slice(bias.0, bias.1, "conv2d: bias")?;
        let (b, c, h, wd) = input.1.shape().dims4()?;
        let (cout, cin, kh, kw) = weight.1.shape().dims4()?;
        if cin != c || kh != kw {
            candle_core::bail!(
                "conv2d: weight {:?} does not fit input {:?}",
                weight.1.shape(),
                input.1.shape()
            );
        }
        let k = kh;
        let (s, p) = (self.stride, self.padding);
        if h + 2 * p < k || wd + 2 * p < k {
            candle_core::bail!("conv2d: input {h}x{wd} smaller than kernel {k}");
        }
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (wd + 2 * p - k) / s + 1;
        let ckk = c * k * k;
        let plane = oh * ow;
        let mut out = vec![0f32; b * cout * plane];
        let rows_per_band = (BAND_FLOATS / (ckk * ow).max(1)).clamp(1, oh);
        let bands_per_image = oh.div_ceil(rows_per_band);
        let direct = k == 1 && s == 1 && p == 0;
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..b * bands_per_image).into_par_iter().for_each(|unit| {
            let bi = unit / bands_per_image;
            let y0 = (unit % bands_per_image) * rows_per_band;
            let y1 = (y0 + rows_per_band).min(oh);
            let n = (y1 - y0) * ow;
            let xin = &x[bi * c * h * wd..(bi + 1) * c * h * wd];
            // The band's output block: rows = cout (stride plane), cols = n (stride 1).
            // SAFETY: bands cover disjoint (image, row-range) blocks of `out`.
            let dst = unsafe { out_ptr.get().add(bi * cout * plane + y0 * ow) };
            for (co, &b) in bias.iter().enumerate().take(cout) {
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add(co * plane), n) };
                row.fill(b);
            }
            let mut cols_buf;
            let (cols, cols_rs): (&[f32], usize) = if direct {
                (&xin[y0 * ow..], plane)
            } else {
                cols_buf = vec![0f32; ckk * n];
                fill_cols(&mut cols_buf, xin, c, h, wd, k, s, p, ow, y0, y1);
                (&cols_buf, n)
            };
            // dst (cout × n, on the bias) += weight (cout × ckk) · cols (ckk × n)
            unsafe {
                gemm_serial(
                    cout,
                    n,
                    ckk,
                    dst,
                    plane,
                    true,
                    w.as_ptr(),
                    ckk,
                    cols.as_ptr(),
                    1,
                    cols_rs,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, cout, oh, ow))))
    }
}

/// im2col for output rows `y0..y1`: row `(ci, ky, kx)` of `cols` holds, for each output
/// pixel of the band, the input value under kernel tap `(ky, kx)` (0 in the padding).
#[allow(clippy::too_many_arguments)]
fn fill_cols(
    cols: &mut [f32],
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    ow: usize,
    y0: usize,
    y1: usize,
) {
    let n = (y1 - y0) * ow;
    for ci in 0..c {
        let xplane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (ci * k + ky) * k + kx;
                let row = &mut cols[r * n..(r + 1) * n];
                // Output columns whose input x = ox*s + kx - p falls inside [0, w).
                let ox_lo = p.saturating_sub(kx).div_ceil(s);
                let ox_hi = if w + p > kx {
                    ((w + p - kx - 1) / s + 1).min(ow)
                } else {
                    0
                };
                for (j, oy) in (y0..y1).enumerate() {
                    let seg = &mut row[j * ow..(j + 1) * ow];
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize || ox_lo >= ox_hi {
                        // Already zero (fresh buffer).
                        continue;
                    }
                    let xrow = &xplane[iy as usize * w..(iy as usize + 1) * w];
                    let ix0 = ox_lo * s + kx - p;
                    if s == 1 {
                        let len = ox_hi - ox_lo;
                        seg[ox_lo..ox_hi].copy_from_slice(&xrow[ix0..ix0 + len]);
                    } else {
                        for (o, d) in seg[ox_lo..ox_hi].iter_mut().enumerate() {
                            *d = xrow[ix0 + o * s];
                        }
                    }
                }
            }
        }
    }
}

impl candle_core::CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-band-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), (s3, l3))
    }
}
