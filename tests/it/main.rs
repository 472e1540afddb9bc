//! The one integration-test binary (see ARCHITECTURE.md): a module per feature.

mod support;

mod cli_ingest;
mod cli_report;
mod cli_run;
mod crash;
mod deliver_lmtp;
mod deliver_maildir;
mod deliver_smtp;
mod dsn;
mod exit_codes;
mod faults;
mod postfix;
mod spool;
