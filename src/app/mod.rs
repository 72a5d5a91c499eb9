//! The `daps` subcommands other than `bench`: argument structs (clap) and their implementations,
//! kept in the library so they can be tested and reused.

pub mod demo;
pub mod grid;
pub mod report;
pub mod solve;
pub mod train;
