//! The one integration-test binary (see ARCHITECTURE.md): a module per feature.

mod support;

mod deliver_maildir;
mod dsn;
mod spool;
