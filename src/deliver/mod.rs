//! Delivery backends: one trait, one module per kind of restored store.
//!
//! A failed delivery is data (`Outcome`), not an `Err`: `Err(StoreError)` means the store
//! itself cannot be used (down, full disk) and the run must stop and checkpoint.

pub mod maildir;

use crate::address::ReversePath;

/// One message to hand to the store, for one or more of its recipients.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// Stable across runs: the same message and recipient always give the same key, so a
    /// resumed run can recognise a copy it already made.
    pub message_key: &'a str,
    pub sender: &'a ReversePath,
    /// The message bytes exactly as spooled.
    pub content: &'a [u8],
    /// When the message arrived at the spool (Maildir names and `Received:` use it).
    pub arrival: chrono::DateTime<chrono::FixedOffset>,
    /// True when an earlier run was interrupted while this delivery was in flight: the
    /// backend must look harder for a copy already made (for Maildir, in `cur/` too).
    pub recovering: bool,
}

/// What the store said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted durably. `detail` says where (a path, a queue id).
    Delivered { detail: String },
    /// Already in the store from an earlier, interrupted run: not written again.
    AlreadyThere { detail: String },
    /// Temporary failure: try again later.
    Deferred { reply: String },
    /// Permanent failure: bounce it.
    Failed { reply: String, status: String },
    /// The message was sent but no reply came (connection lost after the final dot): the
    /// store may or may not have it.
    Uncertain { reply: String },
}

/// The store as a whole is unusable: stop, checkpoint, and report.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing was attempted or the attempt surely failed; retrying later may work.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The disk is full (ENOSPC/EDQUOT).
    #[error("the store is out of space: {0}")]
    Full(String),
}

pub trait Deliverer: Send {
    /// A human description of the target (`maildir:/srv/restored`).
    fn describe(&self) -> String;

    /// Checks that the store can be used at all (before a run starts).
    fn probe(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// True when the backend can tell whether an earlier, interrupted delivery reached the
    /// store (Maildir can look for its file; SMTP and LMTP cannot ask).
    fn verifiable(&self) -> bool {
        false
    }

    /// Delivers one message to each of `recipients`; one outcome per recipient, in order.
    fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[&str],
    ) -> Result<Vec<Outcome>, StoreError>;
}
