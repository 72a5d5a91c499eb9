//! Distances between empirical distributions (rows of row-major `[n, d]` f64 buffers).

use crate::noise::stream;
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// 1-D Wasserstein-1 between two empirical distributions (any sizes), as scipy computes it:
/// ∫ |F_a − F_b| over the merged support.
pub fn w1_1d(a: &[f64], b: &[f64]) -> f64 {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    if a.len() == b.len() {
        return a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut prev = a[0].min(b[0]);
    let mut total = 0.0;
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.min(*y),
            (Some(x), None) => *x,
            (None, Some(y)) => *y,
            // Invariant: the loop runs while one of the two has entries left.
            (None, None) => unreachable!(),
        };
        total += (i as f64 / na - j as f64 / nb).abs() * (next - prev);
        prev = next;
        while i < a.len() && a[i] <= next {
            i += 1;
        }
        while j < b.len() && b[j] <= next {
            j += 1;
        }
    }
    total
}

/// Sliced Wasserstein-1: the mean over `n_dirs` random unit directions (seeded) of the 1-D W1
/// between the projections.
pub fn sliced_wasserstein(a: &[f64], b: &[f64], d: usize, n_dirs: usize, seed: u64) -> f64 {
    let dirs: Vec<Vec<f64>> = (0..n_dirs)
        .map(|k| {
            let mut rng = stream(seed, k as u64, 17);
            let v: Vec<f64> = (0..d).map(|_| rng.sample(StandardNormal)).collect();
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / n).collect()
        })
        .collect();
    let proj = |x: &[f64], u: &[f64]| -> Vec<f64> {
        x.chunks(d)
            .map(|r| r.iter().zip(u).map(|(p, q)| p * q).sum())
            .collect()
    };
    // Summed in order after the parallel map: a parallel sum's order would follow the thread count.
    let total: f64 = dirs
        .par_iter()
        .map(|u| w1_1d(&proj(a, u), &proj(b, u)))
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    total / n_dirs as f64
}

/// Total variation ½Σ|w_k − f_k| between exact component weights and the fractions of samples
/// assigned to each component.
pub fn mode_weight_tv(weights: &[f64], labels: &[usize]) -> f64 {
    let mut counts = vec![0usize; weights.len()];
    for &l in labels {
        counts[l] += 1;
    }
    let n = labels.len().max(1) as f64;
    0.5 * weights
        .iter()
        .zip(&counts)
        .map(|(w, c)| (w - *c as f64 / n).abs())
        .sum::<f64>()
}

/// Exact W1 (Euclidean cost) between two equal-size point sets with uniform weights: the
/// optimal assignment, by the shortest-augmenting-path Hungarian method, O(n³).
pub fn w1_exact(a: &[f64], b: &[f64], d: usize) -> f64 {
    let n = a.len() / d;
    assert_eq!(b.len() / d, n, "w1_exact needs equal sample counts");
    let cost = |i: usize, j: usize| -> f64 {
        a[i * d..(i + 1) * d]
            .iter()
            .zip(&b[j * d..(j + 1) * d])
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    // 1-based potentials u (rows), v (cols); p[j] = row matched to column j.
    let inf = f64::INFINITY;
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0usize;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    (1..=n).map(|j| cost(p[j] - 1, j - 1)).sum::<f64>() / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_1d_shift_and_unequal_sizes() {
        let a = [0.0, 1.0, 2.0];
        let b = [0.5, 1.5, 2.5];
        assert!((w1_1d(&a, &b) - 0.5).abs() < 1e-12);
        // scipy.stats.wasserstein_distance([0,1,3],[5,6]) = 4.1666…
        assert!((w1_1d(&[0.0, 1.0, 3.0], &[5.0, 6.0]) - 25.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn assignment_matches_brute_force() {
        // 6 points in 2-D: compare with the best of all 720 permutations.
        let mut rng = stream(3, 0, 0);
        let a: Vec<f64> = (0..12).map(|_| rng.random::<f64>()).collect();
        let b: Vec<f64> = (0..12).map(|_| rng.random::<f64>()).collect();
        let n = 6;
        let mut perm: Vec<usize> = (0..n).collect();
        let mut best = f64::INFINITY;
        fn heap(k: usize, p: &mut Vec<usize>, f: &mut dyn FnMut(&[usize])) {
            if k == 1 {
                f(p);
                return;
            }
            for i in 0..k {
                heap(k - 1, p, f);
                let j = if k % 2 == 0 { i } else { 0 };
                p.swap(j, k - 1);
            }
        }
        heap(n, &mut perm, &mut |p| {
            let c: f64 = (0..n)
                .map(|i| {
                    ((a[2 * i] - b[2 * p[i]]).powi(2) + (a[2 * i + 1] - b[2 * p[i] + 1]).powi(2))
                        .sqrt()
                })
                .sum::<f64>()
                / n as f64;
            best = best.min(c);
        });
        assert!((w1_exact(&a, &b, 2) - best).abs() < 1e-12);
    }

    #[test]
    fn tv_of_exact_fractions_is_zero() {
        assert_eq!(mode_weight_tv(&[0.5, 0.5], &[0, 1, 0, 1]), 0.0);
        assert!((mode_weight_tv(&[0.5, 0.5], &[0, 0, 0, 0]) - 0.5).abs() < 1e-12);
    }
}
