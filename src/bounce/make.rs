//! Making the DSNs that are owed (the DSN step of `run`): one per message for its failed
//! recipients as `bounce::decide` settles them, never to the null sender, never against
//! NOTIFY, never twice (see ARCHITECTURE.md); delay warnings; postmaster copies.

use anyhow::Result;
use chrono::{DateTime, Datelike, FixedOffset, Local};

use super::{Decision, policy_verdict};
use crate::address::ReversePath;
use crate::bounce_policy;
use crate::crash_hook;
use crate::dsn::{self, Action, Diagnostic, DsnError, DsnRecipient, DsnRequest};
use crate::incident::Incident;
use crate::ledger::DsnKind;
use crate::ledger::{Change, MessageWork, RcptState, RecipientRow};
use crate::replay::{Event, Replay, STATUS_EXPIRED, read_verified};

/// Messages per page when walking failed recipients.
const PAGE: usize = 500;

impl Replay<'_> {
    /// `--warn-after`: one `delayed` DSN per message for its recipients held or deferred
    /// longer than the threshold, once per recipient; never to `<>`, never against NOTIFY,
    /// never for bulk or list mail (RFC 3834 spirit: no automatic chatter to lists).
    pub(crate) fn warn_delayed(&mut self) -> Result<()> {
        let Some(after) = self.settings.warn_after else {
            return Ok(());
        };
        let threshold = chrono::TimeDelta::from_std(after).unwrap_or(chrono::TimeDelta::MAX);
        let now = self.now();
        let mut after_id = 0;
        loop {
            let page = self.ledger.messages_in_states(
                &[RcptState::Held, RcptState::Deferred],
                after_id,
                PAGE,
            )?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after_id = last.message.id;
            for work in page {
                let m = &work.message;
                if m.sender.is_null() || now - m.arrival < threshold {
                    continue;
                }
                let due: Vec<RecipientRow> = work
                    .recipients
                    .iter()
                    .filter(|r| r.delay_dsn_id.is_none())
                    .filter(|r| dsn::dsn_owed(r.notify, Action::Delayed))
                    .cloned()
                    .collect();
                if due.is_empty() {
                    continue;
                }
                let original = read_verified(m).ok();
                if dsn::warn_suppressed(original.as_deref().unwrap_or_default()) {
                    continue;
                }
                // No warning either to a sender the policy would not bounce to (judged
                // on the bytes just read: one read of the spool).
                let policy = &self.settings.incident.bounces;
                if !bounce_policy::judge(policy, m.sender.as_str(), original.as_deref()).bounces() {
                    continue;
                }
                let work = MessageWork {
                    message: m.clone(),
                    recipients: due,
                };
                self.issue(&work, DsnKind::Delay, &m.sender)?;
            }
        }
    }

    /// One DSN per message for its failed recipients; the null sender gets none.
    pub(crate) fn make_dsns(&mut self) -> Result<()> {
        loop {
            // Each page is settled (bounced or dropped) before the next query, so always
            // start from the beginning.
            let page = self
                .ledger
                .messages_in_states(&[RcptState::Failed], 0, PAGE)?;
            if page.is_empty() {
                return Ok(());
            }
            for work in &page {
                self.settle_failed(work)?;
                crash_hook::at("after-dsn-record");
            }
        }
    }

    fn settle_failed(&mut self, work: &MessageWork) -> Result<()> {
        let m = &work.message;
        let decision = super::decide(
            &m.sender,
            work.recipients.clone(),
            self.settings.postmaster.as_deref(),
        );
        let (owed, unwanted) = match decision {
            Decision::Postmaster(postmaster) => {
                return self.issue(work, DsnKind::Postmaster, &postmaster);
            }
            Decision::NullSender => {
                return self.drop_all(&work.recipients, true, |_| {
                    "null sender: no DSN (RFC 5321 6.1)".into()
                });
            }
            Decision::Failure { owed, unwanted } => (owed, unwanted),
        };
        // The last reply says it was dropped (and still why it failed): left as it was, a
        // "bounced by the incident policy" would read as if a DSN had gone out.
        self.drop_all(&unwanted, false, |r| {
            let failed = r
                .reply
                .as_deref()
                .map(|why| format!("; it failed: {why}"))
                .unwrap_or_default();
            format!(
                "dropped without a DSN: NOTIFY={}, the sender asked for no failure DSN{failed}",
                r.notify.map(|n| n.to_string()).unwrap_or_default()
            )
        })?;
        if owed.is_empty() {
            return Ok(());
        }
        // `[bounces]`: no backscatter to senders our MX did not authenticate, or whose
        // mail it marked as spam. The recipients are dropped with the rule and verdict.
        let verdict = policy_verdict(self.settings.incident, m);
        if !verdict.bounces() {
            return self.drop_all(&owed, false, |r| {
                let failed = r
                    .reply
                    .as_deref()
                    .map(|why| format!("; it failed: {why}"))
                    .unwrap_or_default();
                format!("{}{failed}", verdict.reason())
            });
        }
        let work = &MessageWork {
            message: m.clone(),
            recipients: owed,
        };
        self.issue(work, DsnKind::Failure, &m.sender)
    }

    /// Settles failed recipients without a DSN. With `keep_reply` their last reply (the
    /// reason they failed, which already says there is no DSN) stays and `why` goes only to
    /// the audit trail; otherwise `why` becomes the last reply.
    fn drop_all(
        &mut self,
        recipients: &[RecipientRow],
        keep_reply: bool,
        why: impl Fn(&RecipientRow) -> String,
    ) -> Result<()> {
        if recipients.is_empty() {
            return Ok(());
        }
        self.ledger.write(|tx| {
            for r in recipients {
                let detail = why(r);
                let change = Change {
                    detail: Some(&detail),
                    audit_only: keep_reply,
                    ..Change::default()
                };
                tx.set_state(r, RcptState::Dropped, change)?;
            }
            Ok(())
        })?;
        self.stats.dropped += recipients.len() as u64;
        Ok(())
    }

    /// Makes a DSN of `kind` for `work`, records it with the recipients it settles (or
    /// warns) in one transaction, and tells the printer.
    fn issue(&mut self, work: &MessageWork, kind: DsnKind, to: &ReversePath) -> Result<()> {
        let m = &work.message;
        let built = make_dsn(
            self.settings.incident,
            self.settings.return_limit,
            work,
            kind,
            to,
            Local::now().fixed_offset(),
        );
        let (message_id, bytes) = match built {
            Ok(built) => built,
            Err(e) => match e.downcast_ref::<Unbuildable>() {
                Some(unbuildable) => return self.settle_unbuildable(work, kind, unbuildable),
                None => return Err(e),
            },
        };
        let covered = &work.recipients;
        let to = to.as_str();
        let id = self
            .ledger
            .write(|tx| tx.record_dsn(kind, m.id, to, &message_id, &bytes, covered))?;
        if let Some(m) = &self.metrics {
            m.dsn(kind);
        }
        match kind {
            DsnKind::Failure => self.stats.dsns += 1,
            DsnKind::Delay => self.stats.delay_warnings += 1,
            DsnKind::Postmaster => self.stats.dropped += covered.len() as u64,
        }
        (self.on_event)(Event::Dsn {
            id,
            message: m,
            recipients: covered.len(),
        });
        Ok(())
    }
}

impl Replay<'_> {
    /// One message's DSN cannot be made: its failed recipients are dropped with the reason
    /// (a delay warning is just not sent), and the other messages' DSNs go on.
    fn settle_unbuildable(
        &mut self,
        work: &MessageWork,
        kind: DsnKind,
        unbuildable: &Unbuildable,
    ) -> Result<()> {
        let notice = crate::sanitize::for_terminal(&unbuildable.to_string()).into_owned();
        (self.on_event)(Event::Notice(&notice));
        match kind {
            DsnKind::Delay => Ok(()),
            DsnKind::Failure | DsnKind::Postmaster => {
                self.drop_all(&work.recipients, false, |_| {
                    format!("no DSN: {}", unbuildable.why)
                })
            }
        }
    }
}

/// A DSN that cannot be made for one message: its return path is not one (an old ledger
/// kept a sender today's ingest quarantines), its arrival cannot be written as a date, or
/// a recipient cannot be reported. Its recipients are settled without one; only problems
/// of the configuration (reporting MTA, `From:`) stop the run.
#[derive(Debug, thiserror::Error)]
#[error("no DSN can be made for message {queue_id}: {why}")]
pub struct Unbuildable {
    pub queue_id: String,
    pub why: String,
}

/// What in one message keeps its DSN from being made, found before building it.
fn unbuildable(m: &crate::ledger::MessageRow, to: &ReversePath) -> Option<String> {
    if let Err(why) = to.check() {
        return Some(why);
    }
    // RFC 5322 dates have four-digit years; screened at ingest since, but a ledger may
    // be older.
    let year = m.arrival.year();
    if m.arrival < crate::spool::screen::earliest_arrival() || year > 9999 {
        return Some(format!(
            "its arrival time {} cannot be a real one",
            m.arrival.to_rfc3339()
        ));
    }
    None
}

/// Builds the DSN of `kind` for `work` (its message and the recipients it reports),
/// addressed to `to`; returns its Message-ID and bytes. Reads the original from the spool
/// (headers only are returned when it is unreadable). `Unbuildable` (in the error chain)
/// when this message can have no DSN.
pub fn make_dsn(
    incident: &Incident,
    return_limit: usize,
    work: &MessageWork,
    kind: DsnKind,
    to: &ReversePath,
    date: DateTime<FixedOffset>,
) -> Result<(String, Vec<u8>)> {
    let m = &work.message;
    if let Some(why) = unbuildable(m, to) {
        return Err(anyhow::Error::new(Unbuildable {
            queue_id: m.queue_id.clone(),
            why,
        }));
    }
    let original = read_verified(m).unwrap_or_default();
    let deadline = crate::classify::deadline(incident, m.arrival);
    let recipients: Vec<DsnRecipient> = work
        .recipients
        .iter()
        .map(|r| match kind {
            DsnKind::Delay => delayed_recipient(r, deadline),
            DsnKind::Failure | DsnKind::Postmaster => dsn_recipient(r),
        })
        .collect();
    let message_id = format!(
        "spoolreplay.{}.{}.{}.{}@{}",
        kind.as_str(),
        m.id,
        &m.content_hash[..m.content_hash.len().min(12)],
        date.timestamp_micros(),
        incident.reporting_mta
    );
    let explanation = match kind {
        DsnKind::Failure => explanation(work, incident),
        DsnKind::Delay => delay_explanation(work, deadline),
        DsnKind::Postmaster => format!(
            "This is a copy for the postmaster. The message below was itself a delivery \
             notification (its sender is the null address <>), so no notification is sent \
             about it; it could not be delivered. {}",
            explanation(work, incident)
        ),
    };
    let request = DsnRequest {
        reporting_mta: &incident.reporting_mta,
        incident: &incident.name,
        explanation: &explanation,
        to,
        original: &original,
        envid: m.envid.as_deref(),
        ret: m.ret,
        return_limit,
        arrival: m.arrival,
        queue_id: &m.queue_id,
        recipients: &recipients,
        date,
        message_id: &message_id,
        smtputf8: needs_smtputf8(work),
        from: incident.dsn_from.as_deref(),
    };
    let bytes = dsn::build(&request).map_err(|e| match e {
        // The configuration's fault: every DSN would fail the same way.
        DsnError::BadReportingMta(_) | DsnError::BadFrom(_) | DsnError::BadMessageId(_) => {
            anyhow::Error::new(e)
                .context(format!("cannot build the DSN for message {}", m.queue_id))
        }
        other => anyhow::Error::new(Unbuildable {
            queue_id: m.queue_id.clone(),
            why: other.to_string(),
        }),
    })?;
    let bytes = match kind {
        DsnKind::Postmaster => postmaster_copy(bytes),
        _ => bytes,
    };
    Ok((message_id, bytes))
}

/// Relabels a DSN as a postmaster copy, as Postfix does: `Auto-Submitted: auto-generated`
/// (RFC 3834: a copy for an administrator is not a reply) and a subject that says so. Only
/// our own header block is touched, never the returned message.
fn postmaster_copy(dsn: Vec<u8>) -> Vec<u8> {
    let Some(end) = dsn.windows(4).position(|w| w == b"\r\n\r\n") else {
        return dsn;
    };
    let (head, body) = dsn.split_at(end);
    let head = String::from_utf8_lossy(head)
        .split("\r\n")
        .map(|line| {
            if line.starts_with("Subject:") {
                "Subject: Postmaster copy: undelivered notification".to_string()
            } else if line.eq_ignore_ascii_case("Auto-Submitted: auto-replied") {
                "Auto-Submitted: auto-generated".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The original needed SMTPUTF8 (an address in its envelope is not ASCII): its DSN uses the
/// RFC 6533 global types.
fn needs_smtputf8(work: &MessageWork) -> bool {
    !work.message.sender.as_str().is_ascii()
        || work.recipients.iter().any(|r| !r.address.is_ascii())
}

fn dsn_recipient(r: &RecipientRow) -> DsnRecipient {
    let attempted = r.attempts > 0;
    // A reply from a server is an `smtp;` diagnostic with its Remote-MTA; anything else is
    // our own reason.
    let diagnostic = r.reply.clone().map(|reply| match &r.remote {
        Some(_) => Diagnostic::Smtp(reply),
        None => Diagnostic::Local(reply),
    });
    DsnRecipient {
        final_recipient: r.address.clone(),
        original_recipient: r.orcpt.clone(),
        action: Action::Failed,
        status: r.status.clone().unwrap_or_else(|| "5.0.0".into()),
        diagnostic,
        remote_mta: r.remote.clone(),
        last_attempt: if attempted {
            r.last_attempt
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        } else {
            None
        },
        will_retry_until: None,
    }
}

/// A recipient in a delay warning: still being retried until the deadline.
fn delayed_recipient(r: &RecipientRow, deadline: DateTime<FixedOffset>) -> DsnRecipient {
    let mut d = dsn_recipient(r);
    d.action = Action::Delayed;
    d.status = match r.status.as_deref() {
        Some(s) if s.starts_with("4.") => s.to_string(),
        _ => "4.0.0".to_string(),
    };
    if d.diagnostic.is_none() {
        d.diagnostic = Some(Diagnostic::Local(
            "the mailbox storage is recovering from an outage".into(),
        ));
    }
    d.will_retry_until = Some(deadline);
    d
}

fn delay_explanation(work: &MessageWork, deadline: DateTime<FixedOffset>) -> String {
    format!(
        "Your message arrived here on {}, during an outage of the mailbox storage of the \
         recipients below. It has not been delivered yet. This is only a warning: delivery \
         will be retried until {}; you do not need to send it again.",
        work.message.arrival.to_rfc2822(),
        deadline.to_rfc2822()
    )
}

/// The plain-words story for the DSN's human-readable part.
fn explanation(work: &MessageWork, incident: &Incident) -> String {
    let m = &work.message;
    let expired: Vec<_> = work
        .recipients
        .iter()
        .filter(|r| r.status.as_deref() == Some(STATUS_EXPIRED) || is_expiry(r, m))
        .collect();
    let text = if expired.is_empty() {
        let note = m
            .window
            .as_deref()
            .and_then(|w| incident.windows.iter().find(|x| x.name == w))
            .and_then(|w| w.note.as_deref());
        dsn::explain::bounced(m.arrival, note)
    } else {
        let text = dsn::explain::expired(&dsn::explain::Expiry {
            arrival: m.arrival,
            lifetime: incident.queue_lifetime,
            deadline: crate::classify::deadline(incident, m.arrival),
            restored_at: incident.restored_at,
            tried: expired.iter().any(|r| r.attempts > 0),
        });
        let full = expired
            .iter()
            .any(|r| matches!(r.status.as_deref(), Some("4.2.2" | "5.2.2")));
        if full {
            dsn::explain::mailbox_full(text)
        } else {
            text
        }
    };
    dsn::explain::with_operator_text(text, incident.dsn_text.as_deref())
}

/// An expiry that kept the store's mailbox status (say 4.2.2) instead of 4.4.7: the message
/// was classified `expire`.
fn is_expiry(r: &RecipientRow, m: &crate::ledger::MessageRow) -> bool {
    m.disposition.as_deref() == Some("expire") && r.attempts > 0
}

#[cfg(test)]
mod tests {
    use crate::dsn::failure_dsn_owed;

    /// Whether a failure DSN is owed for NOTIFY as the ledger stores it.
    fn wants_failure_dsn(stored: Option<&str>) -> bool {
        failure_dsn_owed(stored.map(|n| n.parse().expect("a NOTIFY value")))
    }

    #[test]
    fn notify_decides_failure_dsns() {
        assert!(wants_failure_dsn(None));
        assert!(wants_failure_dsn(Some("FAILURE")));
        assert!(wants_failure_dsn(Some("SUCCESS,FAILURE,DELAY")));
        assert!(!wants_failure_dsn(Some("NEVER")));
        assert!(!wants_failure_dsn(Some("SUCCESS,DELAY")));
    }
}
