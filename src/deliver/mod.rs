//! Delivery backends: one trait, one module per kind of restored store.
//!
//! A failed delivery is data (`Outcome`), not an `Err`: `Err(StoreError)` means the store
//! itself cannot be used (down, full disk) and the run must stop and checkpoint.

pub mod imap;
pub mod lmtp;
pub mod maildir;
pub mod reply;
pub mod smtp;
pub mod target;
#[cfg(test)]
mod testpeer;
mod tls;
mod transaction;
pub mod verify;
pub mod wire;

use std::fmt;

use crate::address::{Notify, ReturnContent, ReversePath};
use reply::Reply;

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
    /// RFC 3461 ENVID, xtext-decoded; passed on only to a server that offers DSN.
    pub envid: Option<&'a str>,
    /// RFC 3461 RET; passed on only to a server that offers DSN.
    pub ret: Option<ReturnContent>,
}

impl<'a> Delivery<'a> {
    /// A first attempt with no RFC 3461 parameters; set `recovering`, `envid` or `ret`
    /// with struct update syntax (`Delivery { ret: Some(…), ..Delivery::new(…) }`).
    pub fn new(
        message_key: &'a str,
        sender: &'a ReversePath,
        content: &'a [u8],
        arrival: chrono::DateTime<chrono::FixedOffset>,
    ) -> Delivery<'a> {
        Delivery {
            message_key,
            sender,
            content,
            arrival,
            recovering: false,
            envid: None,
            ret: None,
        }
    }
}

/// One envelope recipient with its RFC 3461 parameters, as handed to a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientSpec<'a> {
    /// Exactly as in the envelope (no angle brackets).
    pub address: &'a str,
    /// ORCPT as `addr-type;value`, xtext-decoded.
    pub orcpt: Option<&'a str>,
    pub notify: Option<Notify>,
}

impl<'a> RecipientSpec<'a> {
    /// A recipient without DSN parameters.
    pub fn plain(address: &'a str) -> RecipientSpec<'a> {
        RecipientSpec {
            address,
            orcpt: None,
            notify: None,
        }
    }
}

/// What the store said about one recipient.
///
/// `remote` is `Some(server name)` exactly when `reply`/`detail` is a remote server's
/// answer (SMTP, LMTP): the DSN builder then writes `Remote-MTA` and an `smtp;` diagnostic.
/// Local stores (Maildir) and refusals made before anything was sent leave it `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted durably. `detail` says where (a path, or the server's reply with its queue id).
    Delivered {
        detail: String,
        remote: Option<String>,
    },
    /// Already in the store from an earlier, interrupted run: not written again.
    AlreadyThere { detail: String },
    /// Temporary failure: try again later.
    Deferred {
        reply: Answer,
        remote: Option<String>,
    },
    /// Permanent failure: bounce it. `status` is the RFC 3463 code (`5.1.1`): the server's
    /// enhanced code when it sent one, or ours for a local refusal.
    Failed {
        reply: Answer,
        status: String,
        remote: Option<String>,
    },
    /// The message was handed over completely (final dot sent) but the connection broke or
    /// timed out before the server's reply for this recipient: it may or may not have been
    /// delivered. Retrying risks a duplicate; bouncing risks a false bounce.
    Uncertain {
        reply: Answer,
        remote: Option<String>,
    },
}

/// Why a recipient was not delivered: the store's reply, kept parsed so the pace, the DSN
/// status and the ledger read its code and enhanced status rather than parse a line again;
/// or our own words when no reply decided it. `Display` is the one line the ledger, the
/// report and a DSN's diagnostic show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The server's reply to this recipient: its verdict.
    Reply(Reply),
    /// A reply that does not fit the step it answered (a 2xx/3xx where a refusal or another
    /// code was due): shown, but not the server's verdict on the recipient.
    Unexpected { step: String, reply: Reply },
    /// Our own words: a connection lost, a local refusal, a Maildir error.
    Local(String),
}

impl Answer {
    /// The server's verdict on the recipient, if a reply gave one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Answer::Reply(reply) => Some(reply),
            Answer::Unexpected { .. } | Answer::Local(_) => None,
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Reply(reply) => write!(f, "{reply}"),
            Answer::Unexpected { step, reply } => write!(f, "unexpected reply to {step}: {reply}"),
            Answer::Local(text) => f.write_str(text),
        }
    }
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

/// The store failed on a message's next recipient, after `outcomes` for the ones before
/// it (stores that hand a message over one recipient at a time: IMAP, `--verify-store`).
/// While no copy can be in the store, the failure is the whole message's (`Err`: it is
/// tried again whole). Once one may be (delivered, found, or uncertain), those outcomes
/// stand and the other recipients defer with the failure as their reply: trying the
/// whole message again would make second copies.
pub(crate) fn rest_deferred(
    mut outcomes: Vec<Outcome>,
    recipients: usize,
    e: StoreError,
) -> Result<Vec<Outcome>, StoreError> {
    let in_store = |o: &Outcome| {
        matches!(
            o,
            Outcome::Delivered { .. } | Outcome::AlreadyThere { .. } | Outcome::Uncertain { .. }
        )
    };
    if !outcomes.iter().any(in_store) {
        return Err(e);
    }
    let reply = e.to_string();
    while outcomes.len() < recipients {
        outcomes.push(Outcome::Deferred {
            reply: Answer::Local(reply.clone()),
            remote: None,
        });
    }
    Ok(outcomes)
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
        recipients: &[RecipientSpec<'_>],
    ) -> Result<Vec<Outcome>, StoreError>;

    /// Whether this connection should be closed now, after `idle` without work: a store
    /// connection that holds a cluster slot (`cluster::slots`) gives it up when another
    /// member waits for one. Others keep their connection.
    fn give_up(&self, _idle: std::time::Duration) -> bool {
        false
    }
}
