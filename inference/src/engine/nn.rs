//! Layers shared by the models: linear, conv, group/layer norm, attention.
//!
//! Group norm and layer norm have fused CPU kernels here (two-pass statistics in f64, then
//! PyTorch's `x * scale + shift` form in f32), because candle's generic versions are several
//! passes over memory and compute the variance as `E[x²] - mean²` in f32. Other devices use a
//! tensor-op formulation.

use anyhow::Result;
use candle_core::{CpuStorage, DType, Device, Layout, Module, Shape, Tensor};
use rayon::prelude::*;

use super::weights::Weights;

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
        if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
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

/// `torch.nn.GroupNorm` (affine), optionally followed by SiLU in the same pass.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    weight_host: Vec<f32>,
    bias_host: Vec<f32>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            anyhow::bail!("group norm: {channels} channels cannot be split in {groups} groups");
        }
        let weight = w.get(channels, "weight")?;
        let bias = w.get(channels, "bias")?;
        let weight_host = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias_host = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(GroupNorm {
            weight,
            bias,
            weight_host,
            bias_host,
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
        if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
            let x = x.contiguous()?;
            return Ok(x.apply_op1_no_bwd(&GroupNormOp {
                weight: &self.weight_host,
                bias: &self.bias_host,
                groups: self.groups,
                eps: self.eps,
                silu,
            })?);
        }
        // Generic path (GPU): statistics in f32.
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?.reshape((b, self.groups, ()))?;
        let mean = xf.mean_keepdim(2)?;
        let centered = xf.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut wshape = vec![1usize; dims.len()];
        wshape[1] = c;
        let y = normed
            .reshape(dims.as_slice())?
            .broadcast_mul(
                &self
                    .weight
                    .to_dtype(DType::F32)?
                    .reshape(wshape.as_slice())?,
            )?
            .broadcast_add(&self.bias.to_dtype(DType::F32)?.reshape(wshape.as_slice())?)?;
        let y = if silu { y.silu()? } else { y };
        Ok(y.to_dtype(dtype)?)
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
        let src = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("group-norm: f32 only"),
        };
        let (o1, o2) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("group-norm: input not contiguous".into()))?;
        let src = &src[o1..o2];
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
                let n = src.len() as f64;
                let mean = src.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = src
                    .iter()
                    .map(|&v| {
                        let d = v as f64 - mean;
                        d * d
                    })
                    .sum::<f64>()
                    / n;
                let rstd = 1.0 / (var + self.eps).sqrt();
                let (mean, rstd) = (mean as f32, rstd as f32);
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
    weight: Tensor,
    bias: Tensor,
    weight_host: Vec<f32>,
    bias_host: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        let weight = w.get(dim, "weight")?;
        let bias = w.get(dim, "bias")?;
        let weight_host = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias_host = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(LayerNorm {
            weight,
            bias,
            weight_host,
            bias_host,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
            let x = x.contiguous()?;
            return Ok(x.apply_op1_no_bwd(&LayerNormOp {
                weight: &self.weight_host,
                bias: &self.bias_host,
                eps: self.eps,
            })?);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let mean = xf.mean_keepdim(candle_core::D::Minus1)?;
        let centered = xf.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let y = centered
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight.to_dtype(DType::F32)?)?
            .broadcast_add(&self.bias.to_dtype(DType::F32)?)?;
        Ok(y.to_dtype(dtype)?)
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
        let src = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("layer-norm: f32 only"),
        };
        let (o1, o2) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("layer-norm: input not contiguous".into()))?;
        let src = &src[o1..o2];
        let dim = *layout.shape().dims().last().unwrap_or(&1);
        let mut dst = vec![0f32; src.len()];
        dst.par_chunks_mut(dim)
            .zip(src.par_chunks(dim))
            .for_each(|(d, s)| {
                let n = dim as f64;
                let mean = s.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = s
                    .iter()
                    .map(|&v| {
                        let x = v as f64 - mean;
                        x * x
                    })
                    .sum::<f64>()
                    / n;
                let rstd = (1.0 / (var + self.eps).sqrt()) as f32;
                let mean = mean as f32;
                for (i, (d, &v)) in d.iter_mut().zip(s).enumerate() {
                    *d = (v - mean) * rstd * self.weight[i] + self.bias[i];
                }
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Scaled dot-product attention on `(batch*heads, tokens, head_dim)` tensors, computed in
/// query chunks so the score matrix stays small (identical results: softmax is row-wise).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if matches!(q.device(), Device::Cpu) && q.dtype() == DType::F32 {
        let op = super::cpu_kernels::AttentionOp {
            scale: scale as f32,
        };
        return Ok(q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?);
    }
    let (bh, n, _d) = q.dims3()?;
    let m = k.dim(1)?;
    let q = (q * scale)?;
    let kt = k.t()?;
    // Target about 32 MiB of f32 scores per chunk.
    let budget = 8usize << 20;
    let rows = (budget / (bh * m).max(1)).clamp(64, n.max(64));
    if rows >= n {
        let scores = q.matmul(&kt)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        return Ok(probs.matmul(v)?);
    }
    let mut outs = Vec::with_capacity(n.div_ceil(rows));
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        let qc = q.narrow(1, start, len)?;
        let scores = qc.matmul(&kt)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(v)?);
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
    if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
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
