//! Layers shared by the models: linear, conv, group/layer norm, attention.
//!
//! Group norm and layer norm have fused CPU kernels here (two-pass statistics in f64, then
//! PyTorch's `x * scale + shift` form in f32), because candle's generic versions are several
//! passes over memory and compute the variance as `E[x²] - mean²` in f32. Elsewhere (a GPU)
//! f32 takes a two-pass tensor-op formulation (accurate: checked against the CPU's images) and
//! half precision candle's fused kernels, which keep statistics in f32 registers rather than
//! upcasting whole activations.

use anyhow::Result;
use candle_core::{CpuStorage, DType, Device, Layout, Module, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_kernels::f32_slice;
use super::weights::Weights;

/// Whether `x` takes the fused CPU kernels (f32 on the CPU); other devices and dtypes take
/// candle's tensor ops.
fn cpu_kernels_apply(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// `torch.nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear(candle_nn::Linear);

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(w.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Linear(candle_nn::Linear::new(weight, bias)))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.0.forward(x)?)
    }
}

/// `torch.nn.Conv2d` (square kernel, no dilation or groups). On the CPU in f32 it runs
/// [`super::cpu_conv::Conv2dOp`]; elsewhere candle's conv.
#[derive(Clone, Debug)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn load(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = w.get((out_ch, in_ch, kernel, kernel), "weight")?;
        let bias = w.get(out_ch, "bias")?;
        Self::from_parts(weight, bias, stride, padding)
    }

    /// A convolution without a bias (a zero one).
    pub fn load_no_bias(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = w.get((out_ch, in_ch, kernel, kernel), "weight")?;
        let bias = Tensor::zeros(out_ch, weight.dtype(), weight.device())?;
        Self::from_parts(weight, bias, stride, padding)
    }

    fn from_parts(weight: Tensor, bias: Tensor, stride: usize, padding: usize) -> Result<Self> {
        let cfg = candle_nn::Conv2dConfig {
            padding,
            stride,
            dilation: 1,
            groups: 1,
            cudnn_fwd_algo: None,
        };
        Ok(Conv2d {
            inner: candle_nn::Conv2d::new(weight.clone(), Some(bias.clone()), cfg),
            weight,
            bias,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if cpu_kernels_apply(x) {
            let op = super::cpu_conv::Conv2dOp {
                stride: self.stride,
                padding: self.padding,
            };
            return Ok(x
                .contiguous()?
                .apply_op3_no_bwd(&self.weight, &self.bias, &op)?);
        }
        Ok(self.inner.forward(x)?)
    }
}

/// The weight and bias of an affine norm: tensors for the generic path, host copies for the
/// CPU kernels.
#[derive(Clone, Debug)]
struct NormAffine {
    weight: Tensor,
    bias: Tensor,
    weight_host: Vec<f32>,
    bias_host: Vec<f32>,
}

impl NormAffine {
    fn load(w: &Weights, dim: usize) -> Result<Self> {
        let weight = w.get(dim, "weight")?;
        let bias = w.get(dim, "bias")?;
        let weight_host = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias_host = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(NormAffine {
            weight,
            bias,
            weight_host,
            bias_host,
        })
    }
}

/// Generic path: `(x - mean) / sqrt(var + eps)` over the last dimension of an f32 tensor.
fn standardize_last_dim(xf: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xf.mean_keepdim(candle_core::D::Minus1)?;
    let centered = xf.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    Ok(centered.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// CPU kernels: mean and `1 / sqrt(var + eps)` of `v`, two-pass in f64, rounded to f32.
fn mean_rstd(v: &[f32], eps: f64) -> (f32, f32) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| {
            let d = x as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `torch.nn.GroupNorm` (affine), optionally followed by SiLU in the same pass.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    affine: NormAffine,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            anyhow::bail!("group norm: {channels} channels cannot be split in {groups} groups");
        }
        Ok(GroupNorm {
            affine: NormAffine::load(w, channels)?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if cpu_kernels_apply(x) {
            let x = x.contiguous()?;
            return Ok(x.apply_op1_no_bwd(&GroupNormOp {
                weight: &self.affine.weight_host,
                bias: &self.affine.bias_host,
                groups: self.groups,
                eps: self.eps,
                silu,
            })?);
        }
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let mut wshape = vec![1usize; dims.len()];
        wshape[1] = c;
        let per_channel = |t: &Tensor| t.to_dtype(x.dtype())?.reshape(wshape.as_slice());
        let rows = x.contiguous()?.reshape((b, self.groups, ()))?;
        let normed = if x.dtype() == DType::F32 {
            // f32 off the CPU kernels (a GPU run checked against the CPU's images): two-pass
            // statistics, the accurate form.
            standardize_last_dim(&rows, self.eps)?
        } else {
            // Half precision: candle's fused layer-norm kernel gives each (batch, group) row
            // its statistics in f32 registers, with no f32 copy of the activation.
            let len = rows.dim(2)?;
            let ones = Tensor::ones(len, x.dtype(), x.device())?;
            let zeros = Tensor::zeros(len, x.dtype(), x.device())?;
            candle_nn::ops::layer_norm(&rows, &ones, &zeros, self.eps as f32)?
        };
        let y = normed
            .reshape(dims.as_slice())?
            .broadcast_mul(&per_channel(&self.affine.weight)?)?
            .broadcast_add(&per_channel(&self.affine.bias)?)?;
        Ok(if silu { y.silu()? } else { y })
    }
}

struct GroupNormOp<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    groups: usize,
    eps: f64,
    silu: bool,
}

impl candle_core::CustomOp1 for GroupNormOp<'_> {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, "group-norm: input")?;
        let dims = layout.shape().dims();
        let c = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let cpg = c / self.groups;
        let group_len = cpg * spatial;
        let mut dst = vec![0f32; src.len()];
        // One task per (batch, group) block, split further by channel for small group counts.
        dst.par_chunks_mut(group_len)
            .zip(src.par_chunks(group_len))
            .enumerate()
            .for_each(|(bg, (dst, src))| {
                let g = bg % self.groups;
                let (mean, rstd) = mean_rstd(src, self.eps);
                dst.par_chunks_mut(spatial)
                    .zip(src.par_chunks(spatial))
                    .enumerate()
                    .for_each(|(ci, (d, s))| {
                        let ch = g * cpg + ci;
                        let scale = rstd * self.weight[ch];
                        let shift = -scale * mean + self.bias[ch];
                        super::cpu_kernels::affine_act::run(d, s, scale, shift, self.silu);
                    });
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// `torch.nn.LayerNorm` over the last dimension (affine).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    affine: NormAffine,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            affine: NormAffine::load(w, dim)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if cpu_kernels_apply(x) {
            let x = x.contiguous()?;
            return Ok(x.apply_op1_no_bwd(&LayerNormOp {
                weight: &self.affine.weight_host,
                bias: &self.affine.bias_host,
                eps: self.eps,
            })?);
        }
        let (w, b) = (&self.affine.weight, &self.affine.bias);
        if x.dtype() == DType::F32 {
            return Ok(standardize_last_dim(x, self.eps)?
                .broadcast_mul(w)?
                .broadcast_add(b)?);
        }
        // Half precision: candle's fused kernel (statistics in f32 registers, one pass).
        let (w, b) = (w.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &w,
            &b,
            self.eps as f32,
        )?)
    }
}

impl LayerNorm {
    /// A layer norm without learned parameters (`elementwise_affine=False`).
    pub fn plain(dim: usize, eps: f64, device: &Device, dtype: DType) -> Result<Self> {
        Ok(LayerNorm {
            affine: NormAffine {
                weight: Tensor::ones(dim, dtype, device)?,
                bias: Tensor::zeros(dim, dtype, device)?,
                weight_host: vec![1.0; dim],
                bias_host: vec![0.0; dim],
            },
            eps,
        })
    }
}

/// RMS norm over the last dimension with a learned scale (T5's layer norm, diffusers'
/// `RMSNorm`): statistics in f32, `x * weight` in the weight's dtype.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get(dim, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = xf.broadcast_mul(&(var + self.eps)?.sqrt()?.recip()?)?;
        Ok(normed
            .to_dtype(self.weight.dtype())?
            .broadcast_mul(&self.weight)?)
    }
}

struct LayerNormOp<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f64,
}

impl candle_core::CustomOp1 for LayerNormOp<'_> {
    fn name(&self) -> &'static str {
        "layer-norm-f64stats"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, "layer-norm: input")?;
        let dim = *layout.shape().dims().last().unwrap_or(&1);
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(dim)
            .zip(src.par_chunks(dim))
            .for_each(|(d, s)| {
                let (mean, rstd) = mean_rstd(s, self.eps);
                for (i, (d, &v)) in d.iter_mut().zip(s).enumerate() {
                    *d = (v - mean) * rstd * self.weight[i] + self.bias[i];
                }
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Scaled dot-product attention on `(batch*heads, tokens, head_dim)` tensors. On the CPU in
/// f32 a fused kernel; elsewhere cuBLAS-style batched matmuls and candle's fused softmax, in
/// the model's dtype (the softmax kernel accumulates in f32, so no f32 score matrix is
/// made), in query chunks when the score matrix would be large (identical results: softmax
/// is row-wise).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attention_upcast(q, k, v, scale, false)
}

/// The most score-matrix bytes one chunk of [`attention`] may take off the CPU kernels.
const SCORE_CHUNK_BYTES: usize = 512 << 20;

/// [`attention`] with diffusers' `upcast_attention` (SD 2.x): in f16, the scores `q kᵀ` are
/// computed in f32, where f16 overflows. bf16 has f32's range and needs no upcast (nor does
/// diffusers' default SDPA processor do one); a no-op in f32.
pub fn attention_upcast(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    upcast: bool,
) -> Result<Tensor> {
    if cpu_kernels_apply(q) {
        let op = super::cpu_kernels::AttentionOp {
            scale: scale as f32,
        };
        return Ok(q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?);
    }
    let (bh, n, _d) = q.dims3()?;
    let m = k.dim(1)?;
    let dtype = v.dtype();
    let (q, k) = if upcast && dtype == DType::F16 {
        (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?)
    } else {
        (q.clone(), k.clone())
    };
    let q = (q * scale)?;
    let kt = k.t()?;
    let probs_of = |scores: Tensor| -> Result<Tensor> {
        Ok(candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?)
    };
    let rows =
        (SCORE_CHUNK_BYTES / q.dtype().size_in_bytes() / (bh * m).max(1)).clamp(64, n.max(64));
    if rows >= n {
        return Ok(probs_of(q.matmul(&kt)?)?.matmul(v)?);
    }
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let qc = q.narrow(1, start, len)?;
        outs.push(probs_of(qc.matmul(&kt)?)?.matmul(v)?);
        start += len;
    }
    Ok(Tensor::cat(&outs, 1)?)
}

/// Splits `(b, n, heads*d)` into `(b*heads, n, d)`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, c) = x.dims3()?;
    let d = c / heads;
    Ok(x.reshape((b, n, heads, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * heads, n, d))?)
}

/// Inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (bh, n, d) = x.dims3()?;
    let b = bh / heads;
    Ok(x.reshape((b, heads, n, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, n, heads * d))?)
}

/// GEGLU (`hidden, gate = x.chunk(2, -1); hidden * gelu(gate)`) with exact (erf) GELU.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    if cpu_kernels_apply(x) {
        return Ok(x
            .contiguous()?
            .apply_op1_no_bwd(&super::cpu_kernels::GegluOp)?);
    }
    let half = x.dim(candle_core::D::Minus1)? / 2;
    let hidden = x.narrow(candle_core::D::Minus1, 0, half)?;
    let gate = x.narrow(candle_core::D::Minus1, half, half)?;
    Ok((hidden * gelu(&gate)?)?)
}

/// Exact (erf) GELU, as `torch.nn.functional.gelu` with the default `approximate="none"`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu_erf()?)
}

/// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`).
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}
