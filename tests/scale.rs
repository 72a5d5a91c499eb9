//! Scale equivariance: the same problem in other units (prior x → c·x, y → c·y, σ_y → c·σ_y)
//! gives c × the reconstruction, for every registered sampler with its default settings (at a
//! small step budget), c ∈ {0.01, 100}; and a prior that declares nothing runs at scale 1.
//!
//! Both runs draw the same noise (same seed), so the outputs differ only by float rounding: the
//! arithmetic is f32 (relative precision 6e-8 per operation), carried through a few hundred
//! operations per chain, some of them (the mixture's softmax weights) amplifying relative
//! errors by ‖x‖²/σ² ≲ 1e2: a relative tolerance of 1e-3 of the data's scale is float
//! tolerance here (measured: ≤ 5e-6, DPS), while a scale-dependent default (an absolute σ_max,
//! lr or ζ) misses by O(1).

use candle_core::{Device, Tensor};
use daps::noise::SeededNoise;
use daps::operator::linear::MatrixOperator;
use daps::operator::{Measurement, Operator};
use daps::prior::{Denoiser, GaussianMixture, Scale};
use daps::sampler::{Method, Problem, Silent, METHODS};
use nalgebra::{DMatrix, DVector};

const D: usize = 4;

/// A two-component mixture in R^4 with σ_data declared at c·0.5, a 2×4 matrix, y = A x + noise.
fn problem(c: f64) -> (GaussianMixture, MatrixOperator, Measurement) {
    let dev = Device::Cpu;
    let means = vec![
        DVector::from_vec(vec![0.6, -0.4, 0.2, 0.5]),
        DVector::from_vec(vec![-0.5, 0.3, -0.6, 0.1]),
    ];
    let gmm = GaussianMixture::isotropic(vec![0.4, 0.6], means, 0.04, &dev)
        .unwrap()
        .scaled(c)
        .unwrap();
    let a = DMatrix::from_row_slice(2, D, &[0.9, -0.3, 0.4, 0.1, 0.2, 0.7, -0.5, 0.6]);
    let op = MatrixOperator::new(a, &[D], &dev).unwrap();
    let sigma_y = 0.05;
    let x = Tensor::new(&[[0.55f32, -0.35, 0.25, 0.45]], &dev).unwrap();
    let y = (op.forward(&x).unwrap() + Tensor::new(&[[0.03f32, -0.04]], &dev).unwrap())
        .unwrap()
        .affine(c, 0.0)
        .unwrap();
    (
        gmm,
        op,
        Measurement {
            y,
            sigma_y: c * sigma_y,
        },
    )
}

/// The default settings with every step count cut to at most 8 (the test's budget).
fn small(m: Method) -> Method {
    let mut m = m;
    for key in m.keys() {
        if !key.ends_with("steps") {
            continue;
        }
        if let Some(v) = m.settings().get(&key).and_then(|v| v.as_integer()) {
            m = m.set(&key, &v.min(8).to_string()).unwrap();
        }
    }
    m
}

fn run(m: &Method, c: f64) -> daps::Result<Vec<f32>> {
    let (gmm, op, meas) = problem(c);
    let p = Problem {
        prior: &gmm,
        operator: &op,
        measurement: &meas,
    };
    m.supports(&p)?;
    let x = m.run(&p, &[6, D], &mut SeededNoise::new(7), &mut Silent)?;
    Ok(x.flatten_all()?.to_vec1::<f32>()?)
}

#[test]
fn every_method_is_scale_equivariant() {
    for info in METHODS {
        let m = small((info.default)());
        let base = match run(&m, 1.0) {
            Ok(x) => x,
            Err(e) => {
                // A sampler that cannot solve this problem says so before any work.
                eprintln!("{}: skipped ({e})", info.name);
                continue;
            }
        };
        let spread = base.iter().map(|v| v.abs()).fold(0.0f32, f32::max) as f64;
        assert!(spread > 0.1, "{}: degenerate output {base:?}", info.name);
        for c in [0.01, 100.0] {
            let x = run(&m, c).unwrap_or_else(|e| panic!("{} at scale {c}: {e}", info.name));
            let err = x
                .iter()
                .zip(&base)
                .map(|(a, b)| (*a as f64 / c - *b as f64).abs())
                .fold(0.0, f64::max);
            eprintln!(
                "{} at scale {c}: max |x/c − x₁| / max |x₁| = {:.1e}",
                info.name,
                err / spread
            );
            assert!(
                err <= 1e-3 * spread,
                "{} at scale {c}: max |x/c − x₁| = {err:e} (output scale {spread})",
                info.name
            );
        }
    }
}

#[test]
fn scale_is_one_unless_declared() {
    let (gmm, ..) = problem(1.0);
    let sc = Scale::of(&gmm).unwrap();
    assert_eq!(sc.s, 1.0);
    let sc = Scale::of(&gmm.scaled(100.0).unwrap()).unwrap();
    assert!((sc.s - 100.0).abs() < 1e-12);
    let r = gmm.data_range();
    let r100 = gmm.scaled(100.0).unwrap().data_range();
    assert!(
        (r100.1 - 100.0 * r.1).abs() < 1e-9 * r100.1,
        "{r:?} {r100:?}"
    );
}

#[test]
fn presets_keep_the_official_absolute_tau_and_lr() {
    use daps::sampler::{LrRule, TauRule};
    use daps::task::preset::{preset, BUDGETS};
    for task in daps::task::TASKS.iter().map(|t| t.name) {
        for budget in BUDGETS.iter().filter(|b| b.starts_with("daps")) {
            let c = preset(task, budget).unwrap();
            assert_eq!(
                (c.tau_rule, c.lr_rule),
                (TauRule::Fixed, LrRule::Absolute),
                "{task} {budget}"
            );
        }
    }
}

#[test]
fn a_diverging_run_stops_naming_step_and_chain() {
    // DPS with ζ far too large: finite values that leave the prior's range by orders of
    // magnitude (the NaN guard alone would not fire for several steps).
    let (gmm, op, meas) = problem(100.0);
    let p = Problem {
        prior: &gmm,
        operator: &op,
        measurement: &meas,
    };
    let m = Method::from_name("dps")
        .unwrap()
        .set("steps", "50")
        .unwrap()
        .set("zeta", "1e4")
        .unwrap();
    let e = m
        .run(&p, &[3, D], &mut SeededNoise::new(1), &mut Silent)
        .unwrap_err();
    assert!(
        matches!(e, daps::Error::Diverged { .. }),
        "expected a divergence error, got {e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("chain") && msg.contains("step"), "{msg}");
}
