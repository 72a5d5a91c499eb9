//! `daps train`, `daps sample` (in progress).

use clap::Args;

#[derive(Args, Debug)]
pub struct TrainArgs {}

#[derive(Args, Debug)]
pub struct SampleArgs {}

pub fn train(_a: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("daps train is not implemented yet")
}

pub fn sample(_a: SampleArgs) -> anyhow::Result<()> {
    anyhow::bail!("daps sample is not implemented yet")
}
