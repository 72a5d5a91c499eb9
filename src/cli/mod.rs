//! The `daps` subcommands: argument structs (clap), progress and printing over the library.
//! Everything a user of the library needs lives in the library; this is the binary's own code.

pub mod bench;
pub mod demo;
pub mod grid;
pub mod report;
pub mod solve;
pub mod train;
