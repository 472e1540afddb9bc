//! One module per subcommand: glue that builds options, calls domain code and renders.

pub mod audit;
pub mod bounces;
pub mod cluster;
pub mod control;
pub mod ingest;
pub mod report;
pub mod run;
pub mod status;
