//! Bounces: which DSN a message's failed recipients get (`decide`, the one decision that
//! `run` acts on and `bounces preview` shows), making it (`make`), writing it to an outbox
//! (`outbox`) and sending it through a relay (`relay`). `dsn` stays the pure builder of
//! the bytes.
//!
//! The `[bounces]` policy (`bounce_policy`: no DSN to senders our MX did not
//! authenticate, or whose mail it marked as spam) is applied beside [`decide`]
//! ([`policy_verdict`]): both the DSN step and the preview follow it.

mod make;
pub mod outbox;
pub mod relay;

pub use make::{Unbuildable, make_dsn};

use crate::address::ReversePath;
use crate::bounce_policy::{self, Verdict};
use crate::dsn;
use crate::incident::Incident;
use crate::ledger::{MessageRow, RecipientRow};
use crate::replay::read_verified;

/// What becomes of one message's failed recipients.
#[derive(Debug, Clone)]
pub enum Decision {
    /// A failure DSN to the sender for `owed` (an empty `owed` makes none); `unwanted` are
    /// settled without one because their NOTIFY asked for none (RFC 3461 5.2.6).
    Failure {
        owed: Vec<RecipientRow>,
        unwanted: Vec<RecipientRow>,
    },
    /// The sender is `<>` and a postmaster is named: a copy to the postmaster for all.
    Postmaster(ReversePath),
    /// The sender is `<>` and no postmaster is named: no DSN at all (RFC 5321 6.1).
    NullSender,
}

/// Decides the DSN for the `failed` recipients of a message from `sender`, with
/// `postmaster` as configured (`--postmaster`). A bounce that cannot be replayed is never
/// bounced (RFC 5321 4.5.4), whatever its recipients' NOTIFY says.
pub fn decide(
    sender: &ReversePath,
    failed: Vec<RecipientRow>,
    postmaster: Option<&str>,
) -> Decision {
    if sender.is_null() {
        return match postmaster {
            Some(postmaster) => Decision::Postmaster(ReversePath::parse(postmaster)),
            None => Decision::NullSender,
        };
    }
    let (owed, unwanted) = failed
        .into_iter()
        .partition(|r| dsn::failure_dsn_owed(r.notify));
    Decision::Failure { owed, unwanted }
}

/// The `[bounces]` policy's verdict on a DSN to `m`'s sender, from the original as
/// ingested (re-read from the spool and checked against its content hash). Without a
/// policy the spool is not read. Beside [`decide`]: the DSN step applies it to the
/// recipients a failure DSN is owed for, and `bounces preview` shows it.
pub fn policy_verdict(incident: &Incident, m: &MessageRow) -> Verdict {
    let policy = &incident.bounces;
    if !policy.is_active() {
        return bounce_policy::judge(policy, m.sender.as_str(), Some(&[]));
    }
    let original = read_verified(m).ok();
    bounce_policy::judge(policy, m.sender.as_str(), original.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::RcptState;

    fn failed(address: &str, notify: Option<&str>) -> RecipientRow {
        RecipientRow {
            id: 1,
            message_id: 1,
            address: address.into(),
            domain: "example.test".into(),
            orcpt: None,
            notify: notify.map(|n| n.parse().expect("a NOTIFY value")),
            state: RcptState::Failed,
            status: Some("5.1.1".into()),
            reply: None,
            attempts: 1,
            last_attempt: None,
            next_attempt: None,
            remote: None,
            delay_dsn_id: None,
            reply_code: None,
            reply_status: None,
        }
    }

    fn addresses(rows: &[RecipientRow]) -> Vec<&str> {
        rows.iter().map(|r| r.address.as_str()).collect()
    }

    #[test]
    fn notify_splits_owed_from_unwanted() {
        let sender = ReversePath::parse("alice@example.org");
        let rows = vec![
            failed("a@example.test", None),
            failed("b@example.test", Some("NEVER")),
            failed("c@example.test", Some("SUCCESS,FAILURE")),
            failed("d@example.test", Some("DELAY")),
        ];
        let Decision::Failure { owed, unwanted } = decide(&sender, rows, Some("pm@x.test")) else {
            panic!("a sender with an address gets a failure DSN");
        };
        assert_eq!(addresses(&owed), ["a@example.test", "c@example.test"]);
        assert_eq!(addresses(&unwanted), ["b@example.test", "d@example.test"]);
    }

    #[test]
    fn the_null_sender_gets_none_and_the_postmaster_a_copy_when_named() {
        let rows = || vec![failed("a@example.test", Some("NEVER"))];
        assert!(matches!(
            decide(&ReversePath::Null, rows(), None),
            Decision::NullSender
        ));
        assert!(matches!(
            decide(&ReversePath::Null, rows(), Some("postmaster@mx.test")),
            Decision::Postmaster(ReversePath::Address(a)) if a == "postmaster@mx.test"
        ));
    }
}
