//! The DPM-Solver(++) updates the multistep and singlestep solvers share (diffusers writes
//! them in both classes): first, second and third order from a point `s` to `t` over the
//! log-SNR step `h`. The solvers differ in which point is `s` and how the differences `d1`,
//! `d2` are formed from their model outputs.

use anyhow::Result;
use candle_core::Tensor;

use super::dpm_multistep::Algorithm;
use super::mul_scalar;
use super::solver_schedule::Point;

/// The first-order (DDIM-like) update with model output `m` from the point of sigma
/// `from` to that of sigma `to` (both solvers: step `i`'s sigma to step `i + 1`'s).
pub(crate) fn first_order_update(
    algorithm: Algorithm,
    x: &Tensor,
    from: f32,
    to: f32,
    m: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let (t, s) = (Point::at(to), Point::at(from));
    let (alpha_t, sigma_t, alpha_s, sigma_s) = (t.alpha, t.sigma, s.alpha, s.sigma);
    let h = t.lambda - s.lambda;
    Ok(match algorithm {
        Algorithm::DpmSolverPP => {
            (mul_scalar(x, sigma_t / sigma_s)? - mul_scalar(m, alpha_t * ((-h).exp() - 1.0))?)?
        }
        Algorithm::DpmSolver => {
            (mul_scalar(x, alpha_t / alpha_s)? - mul_scalar(m, sigma_t * (h.exp() - 1.0))?)?
        }
        Algorithm::SdeDpmSolverPP => {
            let noise = noise.expect("sde noise");
            ((mul_scalar(x, sigma_t / sigma_s * (-h).exp())?
                + mul_scalar(m, alpha_t * (1.0 - (-2.0 * h).exp()))?)?
                + mul_scalar(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
        }
        Algorithm::SdeDpmSolver => {
            let noise = noise.expect("sde noise");
            ((mul_scalar(x, alpha_t / alpha_s)?
                - mul_scalar(m, 2.0 * (sigma_t * (h.exp() - 1.0)))?)?
                + mul_scalar(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
        }
    })
}

/// The second-order update with the first-order term `d0` and the scaled difference `d1`
/// (multistep: s = the current point; singlestep: s = the start of the group).
pub(crate) fn second_order_update(
    (algorithm, midpoint): (Algorithm, bool),
    x: &Tensor,
    t: Point,
    s: Point,
    h: f32,
    (d0, d1): (&Tensor, &Tensor),
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let (alpha_t, sigma_t, alpha_s, sigma_s) = (t.alpha, t.sigma, s.alpha, s.sigma);
    let em = (-h).exp() - 1.0;
    let ep = h.exp() - 1.0;
    let e2 = 1.0 - (-2.0 * h).exp();
    Ok(match (algorithm, midpoint) {
        (Algorithm::DpmSolverPP, true) => {
            ((mul_scalar(x, sigma_t / sigma_s)? - mul_scalar(d0, alpha_t * em)?)?
                - mul_scalar(d1, 0.5 * (alpha_t * em))?)?
        }
        (Algorithm::DpmSolverPP, false) => {
            ((mul_scalar(x, sigma_t / sigma_s)? - mul_scalar(d0, alpha_t * em)?)?
                + mul_scalar(d1, alpha_t * (em / h + 1.0))?)?
        }
        (Algorithm::DpmSolver, true) => {
            ((mul_scalar(x, alpha_t / alpha_s)? - mul_scalar(d0, sigma_t * ep)?)?
                - mul_scalar(d1, 0.5 * (sigma_t * ep))?)?
        }
        (Algorithm::DpmSolver, false) => {
            ((mul_scalar(x, alpha_t / alpha_s)? - mul_scalar(d0, sigma_t * ep)?)?
                - mul_scalar(d1, sigma_t * (ep / h - 1.0))?)?
        }
        (Algorithm::SdeDpmSolverPP, midpoint) => {
            let noise = noise.expect("sde noise");
            let c1 = if midpoint {
                0.5 * (alpha_t * e2)
            } else {
                alpha_t * (e2 / (-2.0 * h) + 1.0)
            };
            (((mul_scalar(x, sigma_t / sigma_s * (-h).exp())? + mul_scalar(d0, alpha_t * e2)?)?
                + mul_scalar(d1, c1)?)?
                + mul_scalar(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
        }
        (Algorithm::SdeDpmSolver, midpoint) => {
            let noise = noise.expect("sde noise");
            let c1 = if midpoint {
                sigma_t * ep
            } else {
                2.0 * (sigma_t * (ep / h - 1.0))
            };
            (((mul_scalar(x, alpha_t / alpha_s)? - mul_scalar(d0, 2.0 * (sigma_t * ep))?)?
                - mul_scalar(d1, c1)?)?
                + mul_scalar(noise, sigma_t * ((2.0 * h).exp() - 1.0).sqrt())?)?
        }
    })
}

/// The third-order update with the terms `d0`, `d1`, `d2` (SDE-DPM-Solver has none:
/// diffusers refuses it at third order).
pub(crate) fn third_order_update(
    algorithm: Algorithm,
    x: &Tensor,
    t: Point,
    s: Point,
    h: f32,
    (d0, d1, d2): (&Tensor, &Tensor, &Tensor),
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let (alpha_t, sigma_t, alpha_s, sigma_s) = (t.alpha, t.sigma, s.alpha, s.sigma);
    Ok(match algorithm {
        Algorithm::DpmSolverPP => {
            let em = (-h).exp() - 1.0;
            (((mul_scalar(x, sigma_t / sigma_s)? - mul_scalar(d0, alpha_t * em)?)?
                + mul_scalar(d1, alpha_t * (em / h + 1.0))?)?
                - mul_scalar(d2, alpha_t * (((-h).exp() - 1.0 + h) / (h * h) - 0.5))?)?
        }
        Algorithm::DpmSolver => {
            let ep = h.exp() - 1.0;
            (((mul_scalar(x, alpha_t / alpha_s)? - mul_scalar(d0, sigma_t * ep)?)?
                - mul_scalar(d1, sigma_t * (ep / h - 1.0))?)?
                - mul_scalar(d2, sigma_t * ((h.exp() - 1.0 - h) / (h * h) - 0.5))?)?
        }
        Algorithm::SdeDpmSolverPP => {
            let noise = noise.expect("sde noise");
            let e2 = 1.0 - (-2.0 * h).exp();
            let two_h = 2.0 * h;
            ((((mul_scalar(x, sigma_t / sigma_s * (-h).exp())?
                + mul_scalar(d0, alpha_t * e2)?)?
                + mul_scalar(d1, alpha_t * (e2 / (-2.0 * h) + 1.0))?)?
                + mul_scalar(
                    d2,
                    alpha_t * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / (two_h * two_h) - 0.5),
                )?)?
                + mul_scalar(noise, sigma_t * (1.0 - (-2.0 * h).exp()).sqrt())?)?
        }
        Algorithm::SdeDpmSolver => unreachable!("refused at third order when the solver is built"),
    })
}
