//! The `daps` command-line tool.

mod cli;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "daps",
    version,
    about = "Decoupled Annealing Posterior Sampling for inverse problems"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Held-out digits through every 32×32 task, DAPS against DPS, with the built-in prior:
    /// writes a grid PNG and prints a metrics table (no arguments or downloads needed).
    Demo(cli::demo::DemoArgs),
    /// Evaluates methods on a dataset × tasks (× runs) into a run folder: resumable, and
    /// shardable over a scheduler's array jobs (`--shard k/n`).
    Eval(cli::eval::EvalArgs),
    /// Summarises a `daps eval` run folder (table, JSON, self-contained HTML page), or merges
    /// `daps demo --json` files: each method's PSNR / SSIM with 95% intervals and paired
    /// differences.
    Report(cli::report::ReportArgs),
    /// Benchmarks with known answers, and speed measurements.
    #[command(subcommand)]
    Bench(Bench),
    /// Simulate a measurement y = A(x) + σ_y·n of an image and save it.
    Measure(cli::solve::MeasureArgs),
    /// Sample x from p(x | y) for a saved measurement.
    Solve(cli::solve::SolveArgs),
    /// List the tasks (operators) and their parameters.
    Tasks(cli::solve::TasksArgs),
    /// List the samplers (`solve --method`), their network evaluations and references.
    Methods,
    /// Train a diffusion prior on images.
    Train(cli::train::TrainArgs),
    /// Draw unconditional samples from a prior.
    Sample(cli::train::SampleArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// Gaussian-mixture posteriors (MCGdiff benchmark) against the exact posterior.
    Gmm(cli::bench::GmmArgs),
    /// The DAPS paper's 2-D nonlinear "trap" example, W1 to the reference posterior.
    Toy2d(cli::bench::Toy2dArgs),
    /// This machine's GEMM rate, the FFHQ-256 ADM and digits networks against it, and one DAPS
    /// level split into network / operator / x0 step / other.
    Speed(cli::bench::SpeedArgs),
    /// A neural prior's denoising error per σ on held-out digits, and its time per evaluation.
    Prior(cli::bench::PriorArgs),
    /// Time per network evaluation, decode and decode VJP of a latent prior (default: the
    /// FFHQ-256 LDM-VQ4 architecture with random weights), and what a LatentDAPS-100 run costs.
    Latent(cli::bench::LatentArgs),
}

fn main() {
    let cli = parse();
    // `daps tasks | head` ends quietly, as Unix tools do, instead of panicking on EPIPE.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    daps::nn::reuse_freed_memory();
    // candle 0.11 runs large elementwise ops on a second, spinning thread pool beside rayon's;
    // with rayon's threads busy (conv tiles, batch pieces) the two oversubscribe the cores
    // (DAPS on the digits prior: about 20% less CPU time without it). Parallelism is rayon's.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // candle 0.11 asks for its matmul thread count on every call, and without RAYON_NUM_THREADS
    // counts the physical cores by reading /proc/cpuinfo each time (54,000 reads in a 2-core
    // `daps demo`). Rayon's own default, said once.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // Pool threads get the main thread's stack size (candle's backward pass recurses over the
    // graph). With one thread (RAYON_NUM_THREADS=1) the command runs on it: otherwise every
    // parallel op is handed from the main thread to the pool thread and back, for nothing
    // (DPS 1.24× faster on the digits prior when run so).
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    let result = if rayon::current_num_threads() == 1 {
        rayon::scope(|_| run(cli))
    } else {
        run(cli)
    };
    if let Err(e) = result {
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, each said once (a library error already quotes its I/O cause).
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// The command line, every subcommand taking negative numbers as values (`--lr -1` is read as a
/// value, then refused by validation with a message, rather than taken for a flag).
fn parse() -> Cli {
    fn allow_negative(c: clap::Command) -> clap::Command {
        c.allow_negative_numbers(true)
            .mut_subcommands(allow_negative)
    }
    let matches = allow_negative(Cli::command()).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Bench(Bench::Gmm(a)) => cli::bench::gmm(a),
        Cmd::Bench(Bench::Toy2d(a)) => cli::bench::toy2d(a),
        Cmd::Bench(Bench::Speed(a)) => cli::bench::speed(a),
        Cmd::Bench(Bench::Prior(a)) => cli::bench::prior(a),
        Cmd::Bench(Bench::Latent(a)) => cli::bench::latent(a),
        Cmd::Demo(a) => cli::demo::demo(a),
        Cmd::Eval(a) => cli::eval::eval(a),
        Cmd::Report(a) => cli::report::report(a),
        Cmd::Measure(a) => cli::solve::measure(a),
        Cmd::Solve(a) => cli::solve::solve(a),
        Cmd::Tasks(a) => cli::solve::tasks(a),
        Cmd::Methods => cli::solve::methods(),
        Cmd::Train(a) => cli::train::train(a),
        Cmd::Sample(a) => cli::train::sample(a),
    }
}
