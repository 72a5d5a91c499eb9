//! Agreement with the official implementation (main branch), from the golden fixtures.

mod common;
use common::*;

use candle_core::{Device, Tensor};
use daps::noise::ReplayNoise;
use daps::operator::{Hdr, Measurement};
use daps::prior::GaussianMixture;
use daps::sampler::{self, DapsConfig, DataGradient, Problem, Silent, X0Method};
use daps::schedule::{annealing_sigmas, lr_multiplier, ode_sigmas, Discretization};
use nalgebra::DVector;

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn annealing_grid_matches_official_main() {
    let j = json("schedule/daps_schedules.json");
    let want = floats(&j["annealing_sigma_steps_float32"]);
    let got = annealing_sigmas(200, 100.0, 0.1, 7.0, Discretization::Main);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // the reference is f32: allow f32 rounding
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1e-3),
            "step {i}: {g} vs {w}"
        );
    }
    let grid64 = floats(&j["annealing_grid_float64_Nplus1_points"]);
    let ours = daps::schedule::poly_grid(100.0, 0.1, 201, 7.0);
    assert!(rel_err(&ours, &grid64) < 1e-12);
}

#[test]
fn inner_ode_grid_and_lr_decay_match_official_main() {
    let j = json("schedule/daps_schedules.json");
    let want = floats(&j["inner_ode_grid_from_sigma100_pythonfloat"]);
    let got = ode_sigmas(5, 100.0, 0.01, 7.0, Discretization::Main);
    assert!(rel_err(&got, &want) < 1e-12, "{got:?}");
    let grids = j["inner_ode_grids_per_outer_step"].as_array().unwrap();
    let sig = annealing_sigmas(200, 100.0, 0.1, 7.0, Discretization::Main);
    for (i, g) in grids.iter().enumerate() {
        let w = floats(g);
        let ours = ode_sigmas(5, sig[i], 0.01, 7.0, Discretization::Main);
        for (a, b) in ours.iter().zip(&w) {
            assert!(
                (a - b).abs() <= 2e-6 * b.abs().max(0.01),
                "outer {i}: {a} vs {b}"
            );
        }
    }
    let lr = floats(&j["mcmc_lr_multiplier_per_outer_step_lr_min_ratio_0.01"]);
    for (i, w) in lr.iter().enumerate() {
        assert!((lr_multiplier(i, 200, 0.01, Discretization::Main) - w).abs() < 1e-12);
    }
}

fn gauss_toy(var: f64) -> GaussianMixture {
    GaussianMixture::isotropic(vec![1.0], vec![DVector::zeros(48)], var, &Device::Cpu).unwrap()
}

#[test]
fn pf_ode_matches_official_euler_trajectories() {
    let f = load("schedule/pf_ode_euler_gaussian_toy.safetensors");
    let prior = gauss_toy(0.25);
    for case in ["step0", "step100", "step199"] {
        let x = &f[&format!("{case}_x_start")];
        let sigma = vec64(&f[&format!("{case}_sigma")])[0];
        let want = vec64(&f[&format!("{case}_x0hat")]);
        let grid = ode_sigmas(5, sigma, 0.01, 7.0, Discretization::Main);
        let got = sampler::ode::euler(&prior, x, &grid).unwrap();
        let e = rel_err(&vec64(&got), &want);
        assert!(e < 2e-5, "{case}: relative error {e}");
    }
}

/// Replays every random draw of an official DAPS run (HDR, Gaussian toy prior, 8×8 image).
#[test]
fn daps_replay_matches_official_output() {
    let f = load("daps_loop/daps_hdr_gausstoy.safetensors");
    let prior =
        GaussianMixture::isotropic(vec![1.0], vec![DVector::zeros(192)], 0.25, &Device::Cpu)
            .unwrap();
    let op = Hdr::default();
    let meas = Measurement {
        y: f["y"].clone(),
        sigma_y: 0.05,
    };
    let cfg = DapsConfig {
        annealing_steps: 10,
        sigma_max: 10.0,
        sigma_min: 0.1,
        ode_steps: 3,
        sigma_min_ode: 0.01,
        x0_method: X0Method::Langevin,
        mcmc_steps: 5,
        lr: 2e-5,
        lr_min_ratio: 0.01,
        tau: 0.01,
        data_gradient: DataGradient::Doubled,
        ..DapsConfig::default()
    };
    let mut draws = vec![(&f["x_start"] / 10.0).unwrap()];
    let nd = &f["noise_draws"];
    for i in 0..nd.dim(0).unwrap() {
        draws.push(nd.get(i).unwrap());
    }
    let mut noise = ReplayNoise::new(draws);
    let p = Problem {
        prior: &prior,
        operator: &op,
        measurement: &meas,
    };
    let out = sampler::daps(&p, &cfg, &[1, 3, 8, 8], &mut noise, &mut Silent).unwrap();
    assert_eq!(noise.remaining(), 0);
    let e = rel_err(&vec64(&out), &vec64(&f["output"]));
    assert!(e < 1e-5, "relative error {e}");
    // and the paper convention differs from it
    let mut cfg2 = cfg.clone();
    cfg2.data_gradient = DataGradient::Paper;
    let mut draws2 = vec![(&f["x_start"] / 10.0).unwrap()];
    for i in 0..nd.dim(0).unwrap() {
        draws2.push(nd.get(i).unwrap());
    }
    let out2 = sampler::daps(
        &p,
        &cfg2,
        &[1, 3, 8, 8],
        &mut ReplayNoise::new(draws2),
        &mut Silent,
    )
    .unwrap();
    assert!(rel_err(&vec64(&out2), &vec64(&f["output"])) > 1e-3);
    let _ = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu);
}
