//! The `daps` subcommands: argument structs (clap), progress and printing over the library.
//! Everything a user of the library needs lives in the library; this is the binary's own code.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod grid;
pub mod outputs;
pub mod report;
pub mod solve;
pub mod solve_dir;
pub mod train;

/// The text condition of a text-to-image prior (`--prior sd:DIR`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PromptArgs {
    /// Text prompt for a Stable Diffusion prior [default: DAPS's "a natural looking image"].
    #[arg(long)]
    pub prompt: Option<String>,
    /// Negative prompt (the unconditional half of classifier-free guidance) [default: ""].
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Classifier-free guidance scale w: ε = ε(neg) + w·(ε(prompt) − ε(neg)) [default: 7.5].
    #[arg(long)]
    pub guidance: Option<f64>,
}

impl PromptArgs {
    /// `None` when no flag is given (the prior's own default); otherwise the flags over DAPS's
    /// defaults. Passing one to an unconditional prior is an error at load time.
    pub fn condition(&self) -> Option<daps::prior::latent::TextCondition> {
        if self.prompt.is_none() && self.negative_prompt.is_none() && self.guidance.is_none() {
            return None;
        }
        let d = daps::prior::sd::default_condition();
        Some(daps::prior::latent::TextCondition {
            prompt: self.prompt.clone().unwrap_or(d.prompt),
            negative_prompt: self.negative_prompt.clone().unwrap_or(d.negative_prompt),
            guidance: self.guidance.unwrap_or(d.guidance),
        })
    }
}

/// [`daps::prior::in_sized_pool`] for the CLI's solves (typed for their `anyhow` closures).
pub fn sized_threads<R: Send>(
    x_shape: &[usize],
    on_cpu: bool,
    f: impl FnOnce() -> anyhow::Result<R> + Send,
) -> anyhow::Result<R> {
    daps::prior::in_sized_pool(x_shape, on_cpu, f)
}

/// `f` on every item, `jobs` at a time (`--jobs`): `jobs` lanes over rayon's pool, each taking
/// every jobs-th item in order, the ops inside still using the pool's free threads; one lane
/// runs here, in order. Results do not depend on the lanes (each item's seeds are its own).
pub fn in_lanes<T: Sync>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    use rayon::prelude::*;
    if jobs <= 1 {
        return items.iter().try_for_each(f);
    }
    (0..jobs)
        .into_par_iter()
        .try_for_each(|lane| items.iter().skip(lane).step_by(jobs).try_for_each(&f))
}

/// `--jobs N` side by side needs the CPU: a GPU's batches run one after another.
pub fn check_jobs(jobs: usize, on_cpu: bool, device: &str) -> anyhow::Result<()> {
    if jobs > 1 && !on_cpu {
        anyhow::bail!(
            "--jobs {jobs} runs batches side by side on the CPU only (--device {device})"
        );
    }
    Ok(())
}

/// A line on stderr when `--jobs 1` leaves cores idle: several batches to do on the CPU, each
/// of shape `x_shape` too small to share over threads, so each runs on one.
pub fn suggest_jobs(x_shape: &[usize], batches: usize, jobs: usize, on_cpu: bool) {
    let threads = rayon::current_num_threads();
    if on_cpu && jobs == 1 && threads > 1 && batches > 1 && daps::prior::too_small_to_share(x_shape)
    {
        eprintln!(
            "  (each batch is small enough to run on one thread; --jobs {} would run {} side by side)",
            threads.min(batches),
            threads.min(batches)
        );
    }
}

/// The measurement noise σ_y a command accepts: finite, in [0, 10] (image units, [−1, 1]); above 1
/// is allowed with a warning (noise larger than the image's range).
pub fn check_sigma_y(sigma_y: f64) -> anyhow::Result<()> {
    if !(sigma_y.is_finite() && (0.0..=10.0).contains(&sigma_y)) {
        anyhow::bail!(
            "--sigma-y must be finite and in [0, 10] (image units, [−1, 1]), got {sigma_y}"
        );
    }
    if sigma_y > 1.0 {
        eprintln!("warning: --sigma-y {sigma_y} exceeds the image's range [−1, 1]");
    }
    Ok(())
}
