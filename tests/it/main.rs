//! The one integration-test binary (see ARCHITECTURE.md): a module per feature.

mod support;

mod cli_ingest;
mod cli_report;
mod cli_run;
mod crash;
mod deliver_maildir;
mod dsn;
mod exim;
mod exit_codes;
mod spool;
