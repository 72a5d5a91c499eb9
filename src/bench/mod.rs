//! Benchmarks with a known answer: Gaussian-mixture posteriors ([`gmm`]) and the DAPS paper's
//! 2-D nonlinear toy ([`toy2d`]); how good and fast a prior is ([`prior`]); the machine's speed
//! figures ([`speed`]).

pub mod gmm;
pub mod prior;
pub mod speed;
pub mod toy2d;

/// mean and 1.96·sd/√n of a list of values.
pub fn mean_ci95(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, f64::NAN);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, 1.96 * (var / n).sqrt())
}
