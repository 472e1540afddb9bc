//! The one integration-test binary (see ARCHITECTURE.md): a module per feature.

// `pub` in this binary's modules means "shared between test modules"; the lint is for the
// library, whose dead `pub` items it catches.
#![allow(unreachable_pub)]

mod support;

mod audit;
mod bounce_policy;
mod bounces;
mod breaker;
mod cli_ingest;
mod cli_report;
mod cli_run;
mod cluster;
mod control;
mod crash;
mod deliver_lmtp;
mod deliver_maildir;
mod deliver_smtp;
mod dsn;
mod exim;
mod exit_codes;
mod faults;
mod hostile_spool;
mod hostile_store;
mod layout;
mod metrics;
mod order;
mod postfix;
mod realworld;
mod report_combined;
mod report_golden;
mod report_html;
mod run_imap;
mod run_lmtp;
mod run_smtp;
mod safety;
mod shard;
mod signals;
mod spool;
mod systemd;
