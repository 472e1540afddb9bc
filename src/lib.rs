//! spoolreplay: replay a mail spool accepted during a mail-store outage into the restored
//! store, bounce what expired, and keep every decision in a resumable ledger.

pub mod address;
pub mod deliver;
pub mod dsn;
pub mod sanitize;
pub mod spool;
pub mod throttle;
