//! `latent-daps` against one official LatentDAPS run (`tests/fixtures/latent/latent_daps_loop`,
//! copied from ../shared/fixtures/latent: DAPS 098df6b, the tiny ldm_vq4 model, 2×2 average
//! pooling of the decoded image, σ_y 0.05, N = 3, M = 2, 3 HMC steps, every random draw
//! recorded). Teacher-forced step by step, then a free run replaying the draws, at the fixture
//! README's tolerances: latents 1e-3, images 1e-4 (a free run is sensitive only through the VQ
//! argmin, whose smallest relative gap in this run is 9e-5).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::{check_close, fixture, load};
use daps::noise::ReplayNoise;
use daps::operator::resize::AvgPool;
use daps::operator::Measurement;
use daps::prior::latent::LatentPrior;
use daps::prior::ldm::LdmPrior;
use daps::sampler::latent_daps::{
    data_gradient, hmc_score, latent_daps_z, ode_estimate, LatentDapsConfig,
};
use daps::sampler::{Method, Observer, Problem, Silent, StepInfo};
use daps::schedule::{annealing_sigmas, lr_multiplier, ode_sigmas, Discretization};
use std::collections::HashMap;

fn prior() -> LdmPrior {
    LdmPrior::from_files(
        &fixture("latent/ldm_vq4/model.safetensors"),
        &fixture("latent/ldm_vq4/daps_model_config.yaml"),
        &Device::Cpu,
    )
    .unwrap()
}

fn cfg() -> LatentDapsConfig {
    // loop.json: annealing edm N = 3, σ 10 → 0.1 poly-7; ODE M = 2 to 0.001; HMC (the ldm block
    // of down_sampling.yaml with 3 steps).
    LatentDapsConfig {
        annealing_steps: 3,
        ode_steps: 2,
        mcmc_steps: 3,
        ..LatentDapsConfig::default()
    }
}

struct Fx(HashMap<String, Tensor>);

impl Fx {
    fn t(&self, n: &str) -> &Tensor {
        self.0
            .get(n)
            .unwrap_or_else(|| panic!("fixture tensor {n}"))
    }
    fn draw(&self, k: usize) -> Tensor {
        self.t("draws").i(k).unwrap()
    }
}

fn fx() -> Fx {
    Fx(load("latent/latent_daps_loop/loop.safetensors"))
}

#[test]
fn schedules_match_the_recorded_ones() {
    let f = fx();
    let c = cfg();
    let sig = annealing_sigmas(3, c.sigma_max, c.sigma_min, c.rho, Discretization::Main);
    let want: Vec<f32> = f.t("annealing_sigma_steps").to_vec1().unwrap();
    for (a, b) in sig.iter().zip(&want) {
        assert!(
            (*a as f32 - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{sig:?} vs {want:?}"
        );
    }
    let grids: Vec<Vec<f32>> = f.t("step_ode_grid").to_vec2().unwrap();
    let lrs: Vec<Vec<f64>> = f.t("hmc_lr").to_vec2().unwrap();
    for i in 0..3 {
        let g = ode_sigmas(2, sig[i], c.sigma_min_ode, c.rho, Discretization::Main);
        for (a, b) in g.iter().zip(&grids[i]) {
            assert!(
                (*a as f32 - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{g:?} vs {:?}",
                grids[i]
            );
        }
        let lr = c.lr * lr_multiplier(i, 3, c.lr_min_ratio, Discretization::Main);
        assert!((lr - lrs[i][0]).abs() <= 1e-15, "lr {lr} vs {}", lrs[i][0]);
    }
}

#[test]
fn every_step_teacher_forced() {
    let f = fx();
    let p = prior();
    let c = cfg();
    let op = AvgPool::new(2).unwrap();
    let m = Measurement {
        y: f.t("y").clone(),
        sigma_y: 0.05,
    };
    let grids: Vec<Vec<f32>> = f.t("step_ode_grid").to_vec2().unwrap();
    let sig: Vec<f32> = f.t("traj_sigma").to_vec1().unwrap();
    let lrs: Vec<Vec<f64>> = f.t("hmc_lr").to_vec2().unwrap();
    let at = |n: &str, i: usize, k: usize| f.t(n).i((i, k)).unwrap();
    for i in 0..3 {
        let zt = f.t("step_zt_in").i(i).unwrap();
        let grid: Vec<f64> = grids[i].iter().map(|&v| v as f64).collect();
        let z0hat = ode_estimate(&p, &zt, &grid).unwrap();
        check_close(
            &format!("step {i} ẑ0"),
            &z0hat,
            &f.t("step_z0hat").i(i).unwrap(),
            1e-4,
            0.0,
        );
        let z0hat = f.t("step_z0hat").i(i).unwrap();
        check_close(
            &format!("step {i} decoded x̂0"),
            &p.decode(&z0hat).unwrap(),
            &f.t("traj_x0hat").i(i).unwrap(),
            1e-4,
            0.0,
        );
        let s = sig[i] as f64;
        let prior = ((&z0hat - &zt).unwrap() / (s * s)).unwrap();
        let h = lrs[i][0].sqrt();
        for k in 0..3 {
            let x = at("hmc_mc_x", i, k);
            let (raw, g) = data_gradient(&p, &op, &m, &x, c.grad_clamp).unwrap();
            check_close(
                &format!("{i}.{k} raw gradient"),
                &raw,
                &at("hmc_grad_raw", i, k),
                1e-3,
                0.0,
            );
            // A clamped entry can differ only where the raw gradient is within the VJP's
            // tolerance of ±1; away from it the clamp is exact.
            check_close(
                &format!("{i}.{k} clamped"),
                &g,
                &at("hmc_grad_clamped", i, k),
                1e-3,
                0.0,
            );
            let g = at("hmc_grad_clamped", i, k);
            let score = hmc_score(&g, c.tau, &zt, &x, s, &prior).unwrap();
            // Up to 1e4 in size (the clamped data term / τ²): one f32 ulp there is 9.8e-4.
            check_close(
                &format!("{i}.{k} score"),
                &score,
                &at("hmc_mc_score", i, k),
                2e-3,
                0.0,
            );
            let eps = f.draw(1 + 5 * i + 1 + k);
            let v0 = at("hmc_mc_v_before", i, k);
            let v = (((v0 * c.momentum).unwrap() + (at("hmc_mc_score", i, k) * h).unwrap())
                .unwrap()
                + (eps * (2.0 * (1.0 - c.momentum)).sqrt()).unwrap())
            .unwrap();
            check_close(
                &format!("{i}.{k} v"),
                &v,
                &at("hmc_mc_v_after", i, k),
                1e-4,
                0.0,
            );
            let xn = (&x + (at("hmc_mc_v_after", i, k) * h).unwrap()).unwrap();
            check_close(
                &format!("{i}.{k} x"),
                &xn,
                &at("hmc_mc_x_new", i, k),
                1e-5,
                0.0,
            );
        }
        // The first momentum is the level's first draw.
        check_close(
            "v0",
            &at("hmc_mc_v_before", i, 0),
            &f.draw(1 + 5 * i),
            0.0,
            0.0,
        );
        let z0y = f.t("step_z0y").i(i).unwrap();
        check_close(
            &format!("step {i} decoded x0"),
            &p.decode(&z0y).unwrap(),
            &f.t("traj_x0y").i(i).unwrap(),
            1e-4,
            0.0,
        );
    }
}

/// Records the decoded x̂0 and x0 of every step.
#[derive(Default)]
struct Frames(Vec<(Tensor, Tensor)>);

impl Observer for Frames {
    fn on_step(&mut self, info: &StepInfo) -> daps::Result<()> {
        self.0.push((info.x0hat.unwrap().clone(), info.x0.clone()));
        Ok(())
    }
}

#[test]
fn free_run_replays_the_reference() {
    let f = fx();
    let p = prior();
    let op = AvgPool::new(2).unwrap();
    let m = Measurement {
        y: f.t("y").clone(),
        sigma_y: 0.05,
    };
    let problem = Problem {
        prior: &p,
        operator: &op,
        measurement: &m,
    };
    let draws: Vec<Tensor> = (0..16).map(|k| f.draw(k)).collect();
    let mut noise = ReplayNoise::new(draws.clone());
    let mut frames = Frames::default();
    let z = latent_daps_z(&problem, &cfg(), &[1, 3, 16, 16], &mut noise, &mut frames).unwrap();
    assert_eq!(noise.remaining(), 0);
    check_close("z0y_final", &z, f.t("z0y_final"), 1e-3, 0.0);
    check_close("output", &p.decode(&z).unwrap(), f.t("output"), 1e-4, 0.0);
    for (i, (x0hat, x0)) in frames.0.iter().enumerate() {
        check_close(
            &format!("traj_x0hat {i}"),
            x0hat,
            &f.t("traj_x0hat").i(i).unwrap(),
            1e-4,
            0.0,
        );
        check_close(
            &format!("traj_x0y {i}"),
            x0,
            &f.t("traj_x0y").i(i).unwrap(),
            1e-4,
            0.0,
        );
    }
    // Through the registry: the same images.
    let method = Method::LatentDaps(cfg());
    method.supports(&problem).unwrap();
    let out = method
        .run(
            &problem,
            &[1, 3, 16, 16],
            &mut ReplayNoise::new(draws),
            &mut Silent,
        )
        .unwrap();
    check_close("output via Method", &out, f.t("output"), 1e-4, 0.0);
    assert_eq!(out.dtype(), DType::F32);
}

#[test]
fn latent_and_pixel_priors_are_not_mixed() {
    let p = prior();
    let op = AvgPool::new(2).unwrap();
    let m = Measurement {
        y: Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap(),
        sigma_y: 0.05,
    };
    let problem = Problem {
        prior: &p,
        operator: &op,
        measurement: &m,
    };
    let e = Method::from_name("daps")
        .unwrap()
        .supports(&problem)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("latent diffusion prior") && e.contains("latent-daps"),
        "{e}"
    );
    let e = Method::from_name("dps")
        .unwrap()
        .run(
            &problem,
            &[1, 3, 16, 16],
            &mut daps::noise::SeededNoise::new(0),
            &mut Silent,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("use --method latent-daps"), "{e}");
    let e = Method::LatentDaps(cfg())
        .run(
            &problem,
            &[1, 3, 18, 18],
            &mut daps::noise::SeededNoise::new(0),
            &mut Silent,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3, 18, 18]"), "{e}");
    let pixel = daps::prior::default::digits(&Device::Cpu).unwrap();
    let problem = Problem {
        prior: &pixel,
        ..problem
    };
    let e = Method::from_name("latent-daps")
        .unwrap()
        .supports(&problem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a latent diffusion prior"), "{e}");
}
