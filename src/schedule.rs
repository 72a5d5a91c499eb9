//! Noise-level grids: the EDM poly-ρ annealing grid and the inner PF-ODE grid, in the two
//! discretisations of the official code (`main` and `legacy`), and the MCMC step-size decay.

use serde::{Deserialize, Serialize};

/// Which branch of the official implementation to follow for grid details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Discretization {
    /// N+1-point grid without its last point, then 0; ODE stops at σ_min_ode; lr ratio i/(N+1).
    #[default]
    Main,
    /// N-point grid ending exactly at σ_min, then 0; ODE's last step goes to 0; lr ratio i/N.
    Legacy,
}

/// `n` points from `hi` to `lo` equally spaced in σ^(1/ρ) (EDM's time discretisation).
pub fn poly_grid(hi: f64, lo: f64, n: usize, rho: f64) -> Vec<f64> {
    if n == 1 {
        return vec![hi];
    }
    let (a, b) = (hi.powf(1.0 / rho), lo.powf(1.0 / rho));
    (0..n)
        .map(|k| {
            let t = k as f64 / (n - 1) as f64;
            (a + t * (b - a)).powf(rho)
        })
        .collect()
}

/// The annealing levels σ_0 > … > σ_{N-1} followed by σ_N = 0 (length N+1).
pub fn annealing_sigmas(
    n: usize,
    sigma_max: f64,
    sigma_min: f64,
    rho: f64,
    disc: Discretization,
) -> Vec<f64> {
    let mut s = match disc {
        Discretization::Main => {
            let mut g = poly_grid(sigma_max, sigma_min, n + 1, rho);
            g.pop();
            g
        }
        Discretization::Legacy => poly_grid(sigma_max, sigma_min, n, rho),
    };
    s.push(0.0);
    s
}

/// The PF-ODE grid from `sigma` down for `m` Euler steps (length m+1).
/// Main ends at `sigma_min_ode`; legacy's last step goes from `sigma_min_ode` to 0.
pub fn ode_sigmas(
    m: usize,
    sigma: f64,
    sigma_min_ode: f64,
    rho: f64,
    disc: Discretization,
) -> Vec<f64> {
    match disc {
        Discretization::Main => poly_grid(sigma, sigma_min_ode, m + 1, rho),
        Discretization::Legacy => {
            let mut g = poly_grid(sigma, sigma_min_ode, m, rho);
            g.push(0.0);
            g
        }
    }
}

/// Step-size multiplier at outer step `i` of `n`: decays linearly from 1 towards `lr_min_ratio`.
pub fn lr_multiplier(i: usize, n: usize, lr_min_ratio: f64, disc: Discretization) -> f64 {
    let r = match disc {
        Discretization::Main => i as f64 / (n + 1) as f64,
        Discretization::Legacy => i as f64 / n as f64,
    };
    1.0 + r * (lr_min_ratio - 1.0)
}

/// `n` points from `hi` to `lo` equally spaced in log σ (InverseBench's "VE geometric" grid).
pub fn geometric_grid(hi: f64, lo: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![hi];
    }
    let r = (lo / hi).ln() / (n - 1) as f64;
    (0..n).map(|k| hi * (r * k as f64).exp()).collect()
}

/// EDM σ(t) = √((1−ᾱ_t)/ᾱ_t) of DDPM's 1000-step linear β schedule, indexed by t = 0..999
/// (σ(0) ≈ 0.010, σ(999) ≈ 157.4).
pub fn ddpm_sigmas() -> Vec<f64> {
    let vp = VpSchedule::ddpm_linear(1000);
    (0..1000).rev().map(|k| vp.sigma(k)).collect()
}

/// VP (DDPM) quantities used by DPS: the 1000-step linear β schedule of DDPM, respaced.
#[derive(Debug, Clone)]
pub struct VpSchedule {
    /// ᾱ at each kept timestep, in sampling order (noisiest first).
    pub alpha_bar: Vec<f64>,
}

impl VpSchedule {
    /// DDPM's linear β ∈ [1e-4, 0.02] over 1000 steps, keeping `steps` evenly spaced timesteps
    /// (guided-diffusion's respacing): β'_t = 1 − ᾱ_t/ᾱ_prev.
    pub fn ddpm_linear(steps: usize) -> Self {
        let t_total = 1000usize;
        let mut ab = Vec::with_capacity(t_total);
        let mut acc = 1.0f64;
        for i in 0..t_total {
            let beta = 1e-4 + (0.02 - 1e-4) * i as f64 / (t_total - 1) as f64;
            acc *= 1.0 - beta;
            ab.push(acc);
        }
        let steps = steps.clamp(1, t_total);
        let kept: Vec<usize> = (0..steps)
            .map(|k| {
                if steps == 1 {
                    t_total - 1
                } else {
                    ((k as f64) * (t_total - 1) as f64 / (steps - 1) as f64).round() as usize
                }
            })
            .collect();
        let alpha_bar = kept.iter().rev().map(|&t| ab[t]).collect();
        Self { alpha_bar }
    }

    /// EDM noise level of a VP state: σ = √((1−ᾱ)/ᾱ).
    pub fn sigma(&self, k: usize) -> f64 {
        let a = self.alpha_bar[k];
        ((1.0 - a) / a).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_grid_endpoints() {
        let g = poly_grid(100.0, 0.01, 6, 7.0);
        assert!((g[0] - 100.0).abs() < 1e-12 && (g[5] - 0.01).abs() < 1e-12);
        assert!((g[1] - 33.034889).abs() < 1e-5, "{}", g[1]);
    }

    #[test]
    fn legacy_ends_at_sigma_min() {
        let s = annealing_sigmas(200, 100.0, 0.1, 7.0, Discretization::Legacy);
        assert_eq!(s.len(), 201);
        assert!((s[199] - 0.1).abs() < 1e-12 && s[200] == 0.0);
        let o = ode_sigmas(5, 1.0, 0.01, 7.0, Discretization::Legacy);
        assert_eq!(o.len(), 6);
        assert!((o[4] - 0.01).abs() < 1e-12 && o[5] == 0.0);
    }

    #[test]
    fn vp_respacing_is_monotone() {
        let v = VpSchedule::ddpm_linear(100);
        assert_eq!(v.alpha_bar.len(), 100);
        assert!(v.alpha_bar.windows(2).all(|w| w[0] < w[1]));
        assert!((v.sigma(0) - 156.6).abs() < 1.0, "{}", v.sigma(0));
    }
}
