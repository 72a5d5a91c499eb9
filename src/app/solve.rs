//! `daps measure`, `daps solve`, `daps tasks` (in progress).

use clap::Args;

#[derive(Args, Debug)]
pub struct MeasureArgs {}

#[derive(Args, Debug)]
pub struct SolveArgs {}

#[derive(Args, Debug)]
pub struct TasksArgs {}

pub fn measure(_a: MeasureArgs) -> anyhow::Result<()> {
    anyhow::bail!("daps measure is not implemented yet")
}

pub fn solve(_a: SolveArgs) -> anyhow::Result<()> {
    anyhow::bail!("daps solve is not implemented yet")
}

pub fn tasks(_a: TasksArgs) -> anyhow::Result<()> {
    anyhow::bail!("daps tasks is not implemented yet")
}
