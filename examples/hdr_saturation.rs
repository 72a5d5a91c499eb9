//! Where does DAPS's data term act on HDR digits? Runs DAPS-50 on held-out digits with the
//! built-in prior and prints, per annealing level, how many pixels of x̂0 and of the x0 sample lie
//! inside clip(2x)'s linear region (|2x| < 1, the only pixels with a data gradient) and how many
//! are saturated on the wrong side of the measurement (y says ink, x says background or the
//! reverse: wrong, yet no gradient to correct them).
//!
//!   cargo run --release --example hdr_saturation [DIGITS] [daps-50 | daps-1k | dps-1000 …]

use anyhow::Result;
use candle_core::{DType, Tensor};
use daps::data::mnist_range;
use daps::metric::image::{psnr, to_unit, IMAGE_RANGE};
use daps::noise::SeededNoise;
use daps::operator::Measurement;
use daps::sampler::{Method, Observer, Problem, StepInfo};
use daps::task::{preset_method, Task, TaskFiles, TaskSpec};

/// 1 where x is saturated on the other side of y (|y| ≥ 0.9 marks y's saturated pixels), else 0.
fn wrong_side(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let f = |t: Tensor| t.to_dtype(DType::F32);
    let two_x = x.affine(2.0, 0.0)?;
    let ink_y_bg_x = (f(y.ge(0.9)?)? * f(two_x.le(-1.0)?)?)?;
    let bg_y_ink_x = (f(y.le(-0.9)?)? * f(two_x.ge(1.0)?)?)?;
    Ok((ink_y_bg_x + bg_y_ink_x)?)
}

fn sum(t: &Tensor) -> Result<f64> {
    Ok(t.sum_all()?.to_scalar::<f32>()? as f64)
}

/// Fractions of pixels: inside the linear region, and saturated against y.
fn stats(x: &Tensor, y: &Tensor) -> Result<(f64, f64)> {
    let n = x.elem_count() as f64;
    let inside = x.affine(2.0, 0.0)?.abs()?.lt(1.0)?.to_dtype(DType::F32)?;
    Ok((sum(&inside)? / n, sum(&wrong_side(x, y)?)? / n))
}

/// The part of ‖x − truth‖² that falls on pixels saturated against y.
fn wrong_error_share(x: &Tensor, y: &Tensor, truth: &Tensor) -> Result<f64> {
    let err = (x - truth)?.sqr()?;
    Ok(sum(&(&err * wrong_side(x, y)?)?)? / sum(&err)?)
}

struct Trace<'a> {
    every: usize,
    y: &'a Tensor,
    truth: &'a Tensor,
}

impl Observer for Trace<'_> {
    fn on_step(&mut self, s: &StepInfo) -> daps::Result<()> {
        if s.step % self.every != 0 && s.step + 1 != s.steps {
            return Ok(());
        }
        let report = || -> Result<()> {
            let (hat_in, hat_wrong) = stats(s.x0hat.expect("DAPS gives x̂0"), self.y)?;
            let (x0_in, x0_wrong) = stats(s.x0, self.y)?;
            let p = psnr(
                &to_unit(s.x0, IMAGE_RANGE)?,
                &to_unit(self.truth, IMAGE_RANGE)?,
                1.0,
            )?;
            let mean_psnr = p.iter().sum::<f64>() / p.len() as f64;
            println!(
                "{:4} {:9.3} {:10.3} {:10.3} {:10.3} {:10.3} {:8.2}",
                s.step, s.sigma, hat_in, hat_wrong, x0_in, x0_wrong, mean_psnr
            );
            Ok(())
        };
        report().map_err(|e| daps::Error::config(e.to_string()))
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(Ok(20), |s| s.parse())?;
    let budget = args.get(2).map_or("daps-50", |s| s.as_str());
    let held_out = daps::prior::default::HELD_OUT;
    let truth = mnist_range(held_out.start..held_out.start + n)?
        .images()
        .clone();
    let (_, c, h, w) = truth.dims4()?;
    let task = Task::build(
        TaskSpec::defaults("hdr", h, w, &TaskFiles::default())?,
        [c, h, w],
    )?;
    let m = Measurement::simulate(&task, &truth, 0.05, &mut SeededNoise::new(7))?;
    let prior = daps::prior::load_on(None, &candle_core::Device::Cpu, None)?;
    // "dps-STEPS" runs DPS instead (the demo's ζ); the x̂0 columns are then its Tweedie estimate
    // and the x0 columns its next state.
    let dps_steps = match budget.strip_prefix("dps-") {
        Some(k) => Some(k.parse::<usize>()?),
        None => None,
    };
    let (truth_in, _) = stats(&truth, &m.y)?;
    println!(
        "{n} held-out digits, {budget}; truth: {:.3} of pixels inside |2x| < 1",
        truth_in
    );
    println!("step     sigma  x̂0 inside  x̂0 wrong  x0 inside   x0 wrong  x0 PSNR");
    let problem = Problem {
        prior: prior.as_ref(),
        operator: &task,
        measurement: &m,
    };
    let mut trace = Trace {
        every: if dps_steps.is_some() { 50 } else { 1 },
        y: &m.y,
        truth: &truth,
    };
    let shape = [n, c, h, w];
    let mut noise = SeededNoise::new(11);
    let method = match dps_steps {
        Some(steps) => match preset_method("hdr", "dps-1000")? {
            Method::Dps(c) => Method::Dps(c.with_steps(steps)),
            m => anyhow::bail!("preset dps-1000 of hdr is {}", m.name()),
        },
        None => preset_method("hdr", budget)?,
    };
    let out = method.run(&problem, &shape, &mut noise, &mut trace)?;
    let (_, wrong) = stats(&out, &m.y)?;
    let p = psnr(
        &to_unit(&out, IMAGE_RANGE)?,
        &to_unit(&truth, IMAGE_RANGE)?,
        1.0,
    )?;
    println!(
        "output: PSNR {:.2}; {wrong:.4} of pixels saturated against y, carrying {:.3} of the \
         squared error",
        p.iter().sum::<f64>() / n as f64,
        wrong_error_share(&out, &m.y, &truth)?
    );
    Ok(())
}
