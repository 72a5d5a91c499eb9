//! The contract every registered task keeps, at 16×16: the output shape as built, the VJP
//! against central finite differences, and, for the linear ones (registry flag `linear`), the
//! [`Linear`] structure: adjointness, prox optimality, pseudo-inverse (normal equations, range
//! projection, minimum norm against an explicit-matrix pseudo-inverse). Plus the same for a
//! random 5×8 [`MatrixOperator`], and the CG defaults against the closed forms.
//!
//! Everything runs in f64. Tolerances (relative, per chain):
//! - VJP vs central differences (ε = 1e-6): 1e-6. Linear and piecewise-linear maps have no
//!   truncation error, rounding is ≈ ε_mach·|f|/ε ≈ 1e-10; phase retrieval is smooth where every
//!   |Fx| ≥ 1e-3 (the point is redrawn until it is), truncation per coefficient ≲ ε²/|Fx|² = 1e-6.
//! - adjointness |⟨Ax, v⟩ − ⟨x, Aᵀv⟩| ≤ 1e-10·‖Ax‖‖v‖ (f64 rounding of FFTs / matmuls ≈ 1e-15).
//! - closed forms (inpainting, average pooling, matrix): residuals 1e-10 (`CLOSED`).
//! - CG (super-resolution, blurs, MRI; [`CgOptions::default`] stops at a recursive relative
//!   residual of 1e-6): residuals of the system CG solves 1e-5 (`ITER` = 10 × rtol, margin for the
//!   drift between recursive and true residual). Errors that CG only controls through the
//!   conditioning get the factor from the operator's spectrum (computed from its explicit
//!   matrix): ‖A x⁺ − y‖ ≤ tol·κ‖y‖ for y in range(A), ‖x⁺ − A⁺y‖ ≤ tol·κ²‖A⁺y‖, with
//!   κ = σ_max/σ_min⁺.

use candle_core::{DType, Device, Tensor};
use daps::operator::{cg, CgOptions, Linear, MatrixOperator, Operator};
use daps::task::{Task, TaskFiles, TaskSpec, TASKS};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::PathBuf;

const H: usize = 16;
const W: usize = 16;
/// Residual tolerance for closed forms (f64).
const CLOSED: f64 = 1e-10;
/// Residual tolerance for the CG defaults: 10 × the CG relative tolerance.
const ITER: f64 = 10.0 * 1e-6;
/// Finite-difference step and tolerance.
const FD_EPS: f64 = 1e-6;
const FD_TOL: f64 = 1e-6;
const BATCH: usize = 2;

// ---------------------------------------------------------------------------------------------
// helpers (local on purpose: tests/common is being consolidated elsewhere)

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn uniform(shape: &[usize], seed: u64, accept: impl Fn(f64) -> bool) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..n)
        .map(|_| loop {
            let u = rng.random_range(-1.0..1.0);
            if accept(u) {
                break u;
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vec64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    vec64(a).iter().zip(vec64(b)).map(|(x, y)| x * y).sum()
}

fn norm(t: &Tensor) -> f64 {
    dot(t, t).sqrt()
}

/// Per-chain Euclidean norms over all but dim 0.
fn chain_norms(t: &Tensor) -> Vec<f64> {
    let b = t.dim(0).unwrap();
    let v = vec64(t);
    v.chunks(v.len() / b)
        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect()
}

/// Asserts ‖err_b‖ ≤ tol·‖scale_b‖ for every chain b.
fn assert_chains(what: &str, err: &Tensor, scale: &Tensor, tol: f64) {
    let (e, s) = (chain_norms(err), chain_norms(scale));
    assert_eq!(e.len(), s.len(), "{what}: batch sizes");
    for (b, (e, s)) in e.iter().zip(&s).enumerate() {
        assert!(
            *e <= tol * s,
            "{what}, chain {b}: ‖err‖ {e:.3e} > {tol:.1e} × {s:.3e} (ratio {:.3e})",
            e / s
        );
    }
}

fn with_batch(b: usize, rest: &[usize]) -> Vec<usize> {
    let mut s = vec![b];
    s.extend_from_slice(rest);
    s
}

fn channels(name: &str) -> usize {
    match name {
        n if n.starts_with("mri-") => 2,
        "inpaint-box" | "gaussian-blur" | "sr4" => 1,
        _ => 3,
    }
}

/// The measurement shape each task has on c×16×16.
fn expected_output(name: &str, c: usize) -> Vec<usize> {
    match name {
        "sr4" | "sr4-pool" => vec![c, H / 4, W / 4],
        // oversample 2: ⌊2/8·16⌋ = 4 rows / columns of zeros on each side.
        "phase-retrieval" => vec![c, H + 8, W + 8],
        // 8 birdcage coils, complex last.
        n if n.starts_with("mri-") => vec![8, H, W, 2],
        _ => vec![c, H, W],
    }
}

/// Whether A has full row rank on 16×16 (in the output convention: y has the shape above).
/// Inpainting: no (y has the image shape; the rows of unobserved pixels are 0). MRI: no (more
/// rows than columns, and unsampled k-space rows are 0). Downsampling: yes. Blur: square; the
/// Gaussian (σ 0.19 at this size) is nearly the identity, so yes; the seeded motion kernel is
/// not decided here (None: the computed rank is used).
fn expect_full_row_rank(name: &str) -> Option<bool> {
    match name {
        "sr4" | "sr4-pool" | "gaussian-blur" | "matrix 5×8" => Some(true),
        "motion-blur" => None,
        _ => Some(false),
    }
}

/// Whether CG's worst-case bound, ½·√κ_M·ln(2/rtol) iterations for a system of condition number
/// κ_M, fits in the 500-iteration cap of [`CgOptions::default`]. When it does not, CG returns
/// its capped iterate (documented), and only what CG guarantees for any iterate is checked.
fn cg_bound_fits(kappa_m: f64) -> bool {
    let o = CgOptions::default();
    0.5 * kappa_m.sqrt() * (2.0 / o.rtol).ln() <= o.max_iter as f64
}

/// Whether prox and pinv are closed forms (else CG).
fn closed_form(name: &str) -> bool {
    name.starts_with("inpaint-") || name == "sr4-pool"
}

fn mask_png() -> PathBuf {
    // One file per test thread: tests run in parallel and would otherwise read each other's
    // half-written file.
    let dir = std::env::temp_dir().join(format!(
        "daps-task-contract-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mask.png");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let img = image::GrayImage::from_fn(W as u32, H as u32, |_, _| {
        image::Luma([if rng.random_bool(0.6) { 255 } else { 0 }])
    });
    img.save(&path).unwrap();
    path
}

/// Every registered task that can be built here. `nonlinear-blur` is skipped: it needs the
/// bkse network weights, which are not shipped (tests/nonlinear_blur.rs covers it with
/// synthetic weights).
fn tasks() -> Vec<(&'static str, Task)> {
    let mask = mask_png();
    TASKS
        .iter()
        .filter(|t| t.name != "nonlinear-blur")
        .map(|t| {
            let files = TaskFiles {
                mask: (t.name == "inpaint-mask").then(|| mask.clone()),
                ..Default::default()
            };
            let spec = TaskSpec::defaults(t.name, H, W, &files).unwrap();
            let task = Task::build(spec, [channels(t.name), H, W])
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            (t.name, task)
        })
        .collect()
}

/// A point where the task is differentiable, well away from kinks and zeros.
fn smooth_point(name: &str, task: &Task, shape: &[usize]) -> Tensor {
    match name {
        // clip(2x, −1, 1) has kinks at x = ±1/2.
        "hdr" => uniform(shape, 11, |u| ((2.0 * u).abs() - 1.0).abs() > 0.1),
        // |F pad(x/2 + 1/2)| is not differentiable where a coefficient vanishes.
        "phase-retrieval" => (0..50)
            .map(|s| uniform(shape, 100 + s, |_| true))
            .find(|x| {
                let m = vec64(&task.forward(x).unwrap());
                m.iter().cloned().fold(f64::INFINITY, f64::min) >= 1e-3
            })
            .expect("a point with every |Fx| ≥ 1e-3"),
        _ => uniform(shape, 11, |_| true),
    }
}

// ---------------------------------------------------------------------------------------------
// every task

#[test]
fn every_task_output_shape_and_vjp_matches_finite_differences() {
    for (name, task) in tasks() {
        let c = channels(name);
        let out = expected_output(name, c);
        assert_eq!(
            task.output_shape(),
            &out[..],
            "{name}: output shape as built"
        );
        let shape = [BATCH, c, H, W];
        let x = smooth_point(name, &task, &shape);
        let ax = task.forward(&x).unwrap();
        assert_eq!(
            ax.dims(),
            &with_batch(BATCH, &out)[..],
            "{name}: forward shape"
        );
        assert_eq!(ax.dtype(), DType::F64, "{name}: forward keeps f64");

        let d = randn(&shape, 12);
        let v = randn(ax.dims(), 13);
        let g = task.vjp(&x, &v).unwrap();
        assert_eq!(g.dims(), &shape, "{name}: vjp shape");
        let f = |t: &Tensor| dot(&v, &task.forward(t).unwrap());
        let xp = (&x + (&d * FD_EPS).unwrap()).unwrap();
        let xm = (&x - (&d * FD_EPS).unwrap()).unwrap();
        let fd = (f(&xp) - f(&xm)) / (2.0 * FD_EPS);
        let an = dot(&g, &d);
        let err = (fd - an).abs() / an.abs().max(fd.abs());
        assert!(
            err <= FD_TOL,
            "{name}: ⟨vjp(x, v), d⟩ {an:.12e} vs central difference {fd:.12e} (rel {err:.2e})"
        );
    }
}

/// `residual_vjp(x, y)` (fused where the operator has a fused form: phase retrieval transforms x
/// once) equals `vjp(x, forward(x) − y)` bit for bit, in f32 and f64, for y shared by the batch
/// (`[1, …]`) or one per chain; an odd number of planes takes the single-plane path too.
#[test]
fn every_task_residual_vjp_equals_vjp_of_the_residual() {
    for (name, task) in tasks() {
        for (batch, dtype) in [(3, DType::F64), (3, DType::F32), (2, DType::F32)] {
            let shape = [batch, channels(name), H, W];
            let x = smooth_point(name, &task, &shape).to_dtype(dtype).unwrap();
            let ax = task.forward(&x).unwrap();
            for yb in [1, batch] {
                let mut dims = ax.dims().to_vec();
                dims[0] = yb;
                let y = randn(&dims, 31).to_dtype(dtype).unwrap();
                let r = ax.broadcast_sub(&y).unwrap();
                let want = task.vjp(&x, &r).unwrap();
                let got = task.residual_vjp(&x, &y).unwrap();
                let diff = vec64(&(&got - &want).unwrap())
                    .iter()
                    .fold(0f64, |m, v| m.max(v.abs()));
                assert_eq!(
                    diff, 0.0,
                    "{name}: residual_vjp vs vjp of the residual, batch {batch}, y batch {yb}, {dtype:?}"
                );
            }
        }
    }
}

/// The device-portable forms (dense products, used off the CPU) equal the CPU kernels: relative
/// 1e-10 per chain in f64 (a dense DFT and an FFT differ by rounding, ≈ 1e-15·√n).
#[test]
fn every_task_portable_form_equals_the_cpu_kernels() {
    for (name, task) in tasks() {
        let shape = [BATCH, channels(name), H, W];
        let x = smooth_point(name, &task, &shape);
        let ax = task.forward(&x).unwrap();
        let px = task.forward_portable(&x).unwrap();
        assert_chains(
            &format!("{name}: portable forward"),
            &(&px - &ax).unwrap(),
            &ax,
            1e-10,
        );
        let v = randn(ax.dims(), 21);
        let g = task.vjp(&x, &v).unwrap();
        let pg = task.vjp_portable(&x, &v).unwrap();
        assert_chains(
            &format!("{name}: portable vjp"),
            &(&pg - &g).unwrap(),
            &g,
            1e-10,
        );
    }
}

#[test]
fn linear_flag_matches_the_linear_capability() {
    for (name, task) in tasks() {
        let info = TASKS.iter().find(|t| t.name == name).unwrap();
        assert_eq!(
            task.as_linear().is_some(),
            info.linear,
            "{name}: registry says linear = {}, as_linear() disagrees",
            info.linear
        );
    }
}

// ---------------------------------------------------------------------------------------------
// linear structure

/// The spectrum of AᵀA from the explicit matrix, for the κ factors and the exact pseudo-inverse.
struct Spectrum {
    eig: SymmetricEigen<f64, nalgebra::Dyn>,
    a: DMatrix<f64>,
    /// Eigenvalues of AᵀA above this count as nonzero (σ > 1e-6·σ_max).
    cut: f64,
}

impl Spectrum {
    fn of(op: &dyn Operator, sample: &[usize]) -> Self {
        let a = daps::task::explicit_matrix(op, sample).unwrap();
        let eig = SymmetricEigen::new(a.transpose() * &a);
        let max = eig.eigenvalues.max();
        Self {
            eig,
            a,
            cut: 1e-12 * max,
        }
    }
    fn rank(&self) -> usize {
        self.eig
            .eigenvalues
            .iter()
            .filter(|&&l| l > self.cut)
            .count()
    }
    /// κ = σ_max/σ_min⁺.
    fn kappa(&self) -> f64 {
        let l = &self.eig.eigenvalues;
        let min = l
            .iter()
            .filter(|&&v| v > self.cut)
            .cloned()
            .fold(f64::INFINITY, f64::min);
        (l.max() / min).sqrt()
    }
    /// κ of AᵀA + I/γ.
    fn kappa_prox(&self, gamma: f64) -> f64 {
        let l = &self.eig.eigenvalues;
        (l.max() + 1.0 / gamma) / (l.min().max(0.0) + 1.0 / gamma)
    }
    /// A⁺y per chain (y `[B, ...]`), as `[B, d]` rows.
    fn pinv(&self, y: &Tensor) -> Vec<DVector<f64>> {
        let b = y.dim(0).unwrap();
        let v = vec64(y);
        let (q, l) = (&self.eig.eigenvectors, &self.eig.eigenvalues);
        let inv = DVector::from_iterator(
            l.len(),
            l.iter().map(|&v| if v > self.cut { 1.0 / v } else { 0.0 }),
        );
        v.chunks(v.len() / b)
            .map(|yb| {
                let aty = self.a.transpose() * DVector::from_column_slice(yb);
                q * (q.transpose() * aty).component_mul(&inv)
            })
            .collect()
    }
}

fn rows_tensor(rows: &[DVector<f64>], shape: &[usize]) -> Tensor {
    let v: Vec<f64> = rows.iter().flat_map(|r| r.iter().cloned()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Adjointness, prox optimality and pseudo-inverse checks of one linear operator on samples of
/// shape `sample`; `closed` selects the tolerances (closed form or CG).
fn check_linear(name: &str, op: &dyn Operator, sample: &[usize], out: &[usize], closed: bool) {
    let lin = op
        .as_linear()
        .unwrap_or_else(|| panic!("{name}: linear but as_linear() is None"));
    let tol = if closed { CLOSED } else { ITER };
    let xs = with_batch(BATCH, sample);
    let ys = with_batch(BATCH, out);
    let x = randn(&xs, 21);
    let v = randn(&ys, 22);

    // Adjointness, and the adjoint is the VJP.
    let ax = op.forward(&x).unwrap();
    let atv = lin.adjoint(&v).unwrap();
    assert_eq!(atv.dims(), &xs[..], "{name}: adjoint shape");
    let (lhs, rhs) = (dot(&ax, &v), dot(&x, &atv));
    let scale = norm(&ax) * norm(&v);
    assert!(
        (lhs - rhs).abs() <= 1e-10 * scale,
        "{name}: ⟨Ax, v⟩ {lhs:.15e} vs ⟨x, Aᵀv⟩ {rhs:.15e} (scale {scale:.3e})"
    );
    let g = op.vjp(&x, &v).unwrap();
    assert_chains(
        &format!("{name}: adjoint vs vjp"),
        &(&g - &atv).unwrap(),
        &atv,
        1e-12,
    );

    let spec = Spectrum::of(op, sample);
    let kappa = spec.kappa();
    let rows: usize = out.iter().product();
    let full_row_rank = spec.rank() == rows;
    if let Some(expect) = expect_full_row_rank(name) {
        assert_eq!(
            full_row_rank,
            expect,
            "{name}: rank {} of a {rows}×{} matrix",
            spec.rank(),
            spec.a.ncols()
        );
    }
    let k = |p: i32| if closed { 1.0 } else { kappa.powi(p) };
    eprintln!(
        "{name}: {rows}×{} rank {} κ {kappa:.3e} full row rank {full_row_rank}",
        spec.a.ncols(),
        spec.rank()
    );

    // Prox optimality, y shared by the chains: Aᵀ(Ax − y) + (x − z)/γ = 0, relative to the
    // right-hand side Aᵀy + z/γ (the residual CG controls).
    let z = randn(&xs, 23);
    let y1 = randn(&with_batch(1, out), 24);
    for gamma in [0.1, 10.0] {
        assert!(
            closed || cg_bound_fits(spec.kappa_prox(gamma)),
            "{name}: prox γ {gamma}: κ {:.2e} too large for the CG cap",
            spec.kappa_prox(gamma)
        );
        let p = lin.prox(&z, &y1, gamma).unwrap();
        assert_eq!(p.dims(), &xs[..], "{name}: prox shape");
        let res = lin
            .adjoint(&op.forward(&p).unwrap().broadcast_sub(&y1).unwrap())
            .unwrap();
        let res = (res + ((&p - &z).unwrap() / gamma).unwrap()).unwrap();
        let rhs = lin
            .adjoint(&y1)
            .unwrap()
            .broadcast_add(&(&z / gamma).unwrap())
            .unwrap();
        assert_chains(&format!("{name}: prox γ {gamma}"), &res, &rhs, tol);
    }

    // Pseudo-inverse of a y off the range: normal equations Aᵀ(A x⁺ − y) = 0, and x⁺ is the
    // minimum-norm solution (the explicit A⁺y).
    let y = randn(&ys, 25);
    let xp = lin.pinv(&y).unwrap();
    assert_eq!(xp.dims(), &xs[..], "{name}: pinv shape");
    if !closed && !cg_bound_fits(kappa * kappa) {
        // CG on the normal equations (κ(AᵀA) = κ²) may stop at the cap short of rtol. Any CG
        // iterate from 0 still has ‖y − A x_k‖ ≤ ‖y‖ (CGNR minimises it over a Krylov space
        // that contains 0): check that, with rounding slack 1e-10.
        let normal = |t: &Tensor| lin.adjoint(&op.forward(t)?);
        let sol = cg(
            normal,
            &lin.adjoint(&y).unwrap(),
            None,
            CgOptions::default(),
        )
        .unwrap();
        eprintln!(
            "{name}: κ² {:.2e} beyond the CG bound: pinv ran {} iterations, normal-equations \
             rel. residual {:.2e}",
            kappa * kappa,
            sol.iterations,
            sol.rel_residual.iter().cloned().fold(0.0, f64::max)
        );
        for yy in [&y, &ax] {
            let xk = lin.pinv(yy).unwrap();
            let r = (op.forward(&xk).unwrap() - yy).unwrap();
            assert_chains(
                &format!("{name}: capped pinv residual"),
                &r,
                yy,
                1.0 + 1e-10,
            );
        }
        return;
    }
    let ne = lin
        .adjoint(&(op.forward(&xp).unwrap() - &y).unwrap())
        .unwrap();
    assert_chains(
        &format!("{name}: pinv normal equations"),
        &ne,
        &lin.adjoint(&y).unwrap(),
        tol,
    );
    let exact = rows_tensor(&spec.pinv(&y), &xs);
    assert_chains(
        &format!("{name}: pinv vs explicit A⁺y (κ² {:.2e})", k(2)),
        &(&xp - &exact).unwrap(),
        &exact,
        tol * k(2),
    );

    // A A⁺ is the projector on range(A): A A⁺ (A x) = A x.
    let ap = op.forward(&lin.pinv(&ax).unwrap()).unwrap();
    assert_chains(
        &format!("{name}: A A⁺ (Ax) = Ax"),
        &(&ap - &ax).unwrap(),
        &ax,
        tol * k(1),
    );
    // With full row rank, A A⁺ y = y for every y.
    if full_row_rank {
        let ap = op.forward(&xp).unwrap();
        assert_chains(
            &format!("{name}: A A⁺ y = y (full row rank)"),
            &(&ap - &y).unwrap(),
            &y,
            tol * k(1),
        );
    }
}

#[test]
fn linear_tasks_adjoint_prox_pinv() {
    for (name, task) in tasks() {
        let info = TASKS.iter().find(|t| t.name == name).unwrap();
        if !info.linear {
            continue;
        }
        let c = channels(name);
        check_linear(
            name,
            &task,
            &[c, H, W],
            &expected_output(name, c),
            closed_form(name),
        );
    }
}

/// An operator whose prox and pinv are the CG defaults of [`Linear`].
struct CgOnly<'a>(&'a dyn Operator);

impl Operator for CgOnly<'_> {
    fn forward(&self, x: &Tensor) -> daps::error::Result<Tensor> {
        self.0.forward(x)
    }
    fn vjp(&self, x: &Tensor, v: &Tensor) -> daps::error::Result<Tensor> {
        self.0.vjp(x, v)
    }
    fn name(&self) -> String {
        format!("{} (CG)", self.0.name())
    }
    fn as_linear(&self) -> Option<&dyn Linear> {
        Some(self)
    }
}

impl Linear for CgOnly<'_> {
    fn adjoint(&self, v: &Tensor) -> daps::error::Result<Tensor> {
        self.0.as_linear().unwrap().adjoint(v)
    }
}

/// The closed forms against the CG defaults on the same operator: ‖x_cg − x‖ ≤ tol·κ·‖x‖ with
/// κ of the system CG solves (AᵀA + I/γ for the prox, κ² of A for the pseudo-inverse).
fn closed_vs_cg(name: &str, op: &dyn Operator, sample: &[usize], out: &[usize]) {
    let lin = op.as_linear().unwrap();
    let cg_op = CgOnly(op);
    let spec = Spectrum::of(op, sample);
    let xs = with_batch(BATCH, sample);
    let z = randn(&xs, 31);
    let y = randn(&with_batch(BATCH, out), 32);
    for gamma in [0.1, 10.0] {
        let a = lin.prox(&z, &y, gamma).unwrap();
        let b = Linear::prox(&cg_op, &z, &y, gamma).unwrap();
        assert_chains(
            &format!("{name}: closed-form prox vs CG, γ {gamma}"),
            &(&a - &b).unwrap(),
            &a,
            ITER * spec.kappa_prox(gamma),
        );
    }
    let a = lin.pinv(&y).unwrap();
    let b = Linear::pinv(&cg_op, &y).unwrap();
    assert_chains(
        &format!("{name}: closed-form pinv vs CG"),
        &(&a - &b).unwrap(),
        &a,
        ITER * spec.kappa().powi(2),
    );
}

#[test]
fn closed_forms_agree_with_cg() {
    for (name, task) in tasks() {
        if !closed_form(name) {
            continue;
        }
        let c = channels(name);
        closed_vs_cg(name, &task, &[c, H, W], &expected_output(name, c));
    }
    let m = random_matrix();
    closed_vs_cg("matrix 5×8", &m, &[8], &[5]);
}

fn random_matrix() -> MatrixOperator {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let a = DMatrix::from_fn(5, 8, |_, _| rng.sample::<f64, _>(StandardNormal));
    MatrixOperator::new(a, &[8], &Device::Cpu).unwrap()
}

#[test]
fn matrix_operator_structure() {
    let m = random_matrix();
    // A random 5×8 matrix has full row rank (almost surely; asserted by check_linear's rank).
    check_linear("matrix 5×8", &m, &[8], &[5], true);
    let a = m.matrix().unwrap();
    let p = m.pseudo_inverse();
    assert!((a * p - DMatrix::identity(5, 5)).norm() < 1e-12);
}

#[test]
fn cg_is_per_chain() {
    // Three chains of diagonal systems: eigenvalues 1..30 (κ 30), their squares (κ 900), and
    // b = 0. Each chain gets its own steps and stopping test; the zero chain stays exactly 0.
    let d: Vec<f64> = (0..30).map(|i| 1.0 + i as f64).collect();
    let mut diag = d.clone();
    diag.extend(d.iter().map(|v| v * v));
    diag.extend(&d);
    let diag = Tensor::from_vec(diag, (3, 30), &Device::Cpu).unwrap();
    let apply = |x: &Tensor| Ok((x * &diag)?);
    let mut b = vec64(&randn(&[3, 30], 51));
    b[60..].fill(0.0);
    let b = Tensor::from_vec(b, (3, 30), &Device::Cpu).unwrap();
    let sol = cg(apply, &b, None, CgOptions::default()).unwrap();
    eprintln!(
        "cg: {} iterations, rel. residuals {:?}",
        sol.iterations, sol.rel_residual
    );
    assert!(sol.rel_residual.iter().all(|&r| r <= 1e-6), "{sol:?}");
    // ‖x − x*‖ ≤ κ·rtol·‖x*‖ per chain.
    let exact = (&b / &diag).unwrap();
    let err = chain_norms(&(&sol.x - &exact).unwrap());
    let size = chain_norms(&exact);
    for (chain, kappa) in [(0, 30.0), (1, 900.0)] {
        assert!(
            err[chain] <= 1e-6 * kappa * size[chain],
            "chain {chain}: error {:.3e} of {:.3e}",
            err[chain],
            size[chain]
        );
    }
    assert_eq!(vec64(&sol.x.narrow(0, 2, 1).unwrap()), vec![0.0; 30]);
}
