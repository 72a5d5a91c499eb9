//! The linear-decoder latent Gaussian of `tests/psld.rs` and `tests/resample.rs`: latents
//! z ~ N(μ_z, I) in R⁴, a fixed invertible linear decoder x = M z and its inverse as the encoder,
//! A [2, 4] a matrix, σ_y = 0.2, so that p(x | y) is Gaussian, N(m, C = LLᵀ) in closed form.

use crate::common::{row_tensor, rows, whitened_bias};
use candle_core::{Device, Tensor};
use daps::noise::{NoiseSource, SeededNoise};
use daps::operator::{MatrixOperator, Measurement, Operator};
use daps::prior::latent::LatentPrior;
use daps::prior::{Denoiser, GaussianMixture};
use daps::sampler::{Method, Problem, Silent};
use nalgebra::{DMatrix, DVector};

pub const D: usize = 4;

/// A latent prior with a linear decoder: x = M z, encoder z = M⁻¹ x.
pub struct LinearLatent {
    pub gmm: GaussianMixture,
    mt: Tensor,
    mit: Tensor,
}

impl Denoiser for LinearLatent {
    fn denoise(&self, x: &Tensor, sigma: f64) -> daps::Result<Tensor> {
        self.gmm.denoise(x, sigma)
    }
    fn device(&self) -> &Device {
        self.gmm.device()
    }
    fn name(&self) -> String {
        "linear-decoder latent Gaussian".into()
    }
    fn sigma_data(&self) -> f64 {
        self.gmm.sigma_data()
    }
    fn sigma_range(&self) -> (f64, f64) {
        self.gmm.sigma_range()
    }
    fn data_range(&self) -> (f64, f64) {
        (-10.0, 10.0)
    }
    fn as_latent(&self) -> Option<&dyn LatentPrior> {
        Some(self)
    }
}

impl LatentPrior for LinearLatent {
    fn latent_shape(&self, image: &[usize]) -> daps::Result<Vec<usize>> {
        Ok(image.to_vec())
    }
    fn decode(&self, z: &Tensor) -> daps::Result<Tensor> {
        Ok(z.matmul(&self.mt.to_dtype(z.dtype())?)?)
    }
    fn decode_vjp(&self, z: &Tensor, g: &Tensor) -> daps::Result<Tensor> {
        Ok(g.matmul(&self.mt.t()?.to_dtype(z.dtype())?)?)
    }
    fn encode(&self, x: &Tensor, _noise: &mut dyn NoiseSource) -> daps::Result<Tensor> {
        Ok(x.matmul(&self.mit.to_dtype(x.dtype())?)?)
    }
}

pub struct Case {
    pub prior: LinearLatent,
    pub op: MatrixOperator,
    pub meas: Measurement,
    pub mean: DVector<f64>,
    pub chol: DMatrix<f64>,
}

fn mat_tensor(m: &DMatrix<f64>) -> Tensor {
    let rows: Vec<f64> = m.transpose().as_slice().to_vec();
    row_tensor(&rows, m.ncols())
}

pub fn case() -> Case {
    let (dy, sy) = (2, 0.2);
    let mut rng = daps::noise::stream(43, 0, 0);
    use rand::Rng;
    let mut n01 = || rng.sample::<f64, _>(rand_distr::StandardNormal);
    let a = DMatrix::from_fn(dy, D, |_, _| n01() * 0.7);
    let y = DVector::from_fn(dy, |_, _| n01());
    // M = I + 0.3·G: invertible, not orthogonal.
    let m = DMatrix::<f64>::identity(D, D) + DMatrix::from_fn(D, D, |_, _| n01() * 0.3);
    let mu_z = DVector::from_element(D, 0.3);
    let gmm = GaussianMixture::isotropic(vec![1.0], vec![mu_z.clone()], 1.0, &Device::Cpu).unwrap();
    let mi = m.clone().try_inverse().unwrap();
    // x ~ N(M μ_z, M Mᵀ); posterior precision (M Mᵀ)⁻¹ + AᵀA/σ_y².
    let prior_prec = (&m * m.transpose()).try_inverse().unwrap();
    let cov = (&prior_prec + a.transpose() * &a / (sy * sy))
        .try_inverse()
        .unwrap();
    let mean = &cov * (&prior_prec * (&m * &mu_z) + a.transpose() * &y / (sy * sy));
    Case {
        prior: LinearLatent {
            gmm,
            mt: mat_tensor(&m.transpose()),
            mit: mat_tensor(&mi.transpose()),
        },
        op: MatrixOperator::new(a, &[D], &Device::Cpu).unwrap(),
        meas: Measurement {
            y: row_tensor(y.as_slice(), dy),
            sigma_y: sy,
        },
        mean,
        chol: cov.cholesky().unwrap().l(),
    }
}

/// (b, r, SE(b), SE(r)) of `n` chains of `m` (see `common::whitened_bias`).
pub fn measure(m: &Method, n: usize, seed: u64) -> (f64, f64, f64, f64) {
    let c = case();
    let p = Problem {
        prior: &c.prior,
        operator: &c.op,
        measurement: &c.meas,
    };
    m.supports(&p).unwrap();
    let out = rows(
        &m.run(&p, &[n, D], &mut SeededNoise::new(seed), &mut Silent)
            .unwrap(),
    );
    whitened_bias(&out, &c.mean, &c.chol)
}

/// Asserts that `m` refuses the case's pixel prior (the latent mixture itself) in `supports` and
/// in `run`, before any work, with "NAME needs a latent diffusion prior".
pub fn assert_refuses_pixel_prior(m: &Method) {
    let c = case();
    let p = Problem {
        prior: &c.prior.gmm,
        operator: &c.op,
        measurement: &c.meas,
    };
    let want = format!("{} needs a latent diffusion prior", m.name());
    let e = m.supports(&p).unwrap_err().to_string();
    assert!(e.contains(&want), "{e}");
    let e = m
        .run(&p, &[2, D], &mut SeededNoise::new(1), &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&want), "{e}");
}

/// `m.supports` for the case's latent prior with `op` on a 1×4×4 image.
pub fn supports_on_image(m: &Method, op: &dyn Operator) -> daps::Result<()> {
    let c = case();
    let img = Measurement {
        y: Tensor::zeros((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu)?,
        sigma_y: 0.05,
    };
    m.supports(&Problem {
        prior: &c.prior,
        operator: op,
        measurement: &img,
    })
}
