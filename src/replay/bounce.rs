//! Making the DSNs that are owed: one per message for its failed recipients, never to the
//! null sender, never against NOTIFY, never twice (see ARCHITECTURE.md).

use anyhow::{Context, Result};
use chrono::{DateTime, Local};

use super::{Event, Replay, STATUS_EXPIRED, read_verified, test_hook};
use crate::dsn::{self, Action, Diagnostic, DsnRecipient, DsnRequest};
use crate::incident::Incident;
use crate::ledger::{Change, MessageWork, RcptState, RecipientRow};

/// Messages per page when walking failed recipients.
const PAGE: usize = 500;

impl Replay<'_> {
    /// One DSN per message for its failed recipients; the null sender gets none.
    pub(super) fn make_dsns(&mut self) -> Result<()> {
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
                test_hook("after-dsn-record");
            }
        }
    }

    fn settle_failed(&mut self, work: &MessageWork) -> Result<()> {
        let m = &work.message;
        if m.sender.is_null() {
            self.ledger.write(|tx| {
                for r in &work.recipients {
                    let detail = "null sender: no DSN (RFC 5321 6.1)";
                    tx.set_state(
                        r,
                        RcptState::Dropped,
                        Change {
                            detail: Some(detail),
                            ..Change::default()
                        },
                    )?;
                }
                Ok(())
            })?;
            self.stats.dropped += work.recipients.len() as u64;
            return Ok(());
        }
        // RFC 3461 5.2.6: a failure DSN only for recipients whose NOTIFY asks for it (or
        // says nothing); the others are settled without one.
        let (owed, unwanted): (Vec<RecipientRow>, Vec<RecipientRow>) = work
            .recipients
            .iter()
            .cloned()
            .partition(|r| wants_failure_dsn(r.notify.as_deref()));
        if !unwanted.is_empty() {
            self.ledger.write(|tx| {
                for r in &unwanted {
                    let detail = format!(
                        "NOTIFY={}: the sender asked for no failure DSN",
                        r.notify.as_deref().unwrap_or_default()
                    );
                    tx.set_state(
                        r,
                        RcptState::Dropped,
                        Change {
                            detail: Some(&detail),
                            ..Change::default()
                        },
                    )?;
                }
                Ok(())
            })?;
            self.stats.dropped += unwanted.len() as u64;
        }
        // An exact copy of this message (same content, ingested twice or from two MX hosts)
        // may already have bounced the same recipient: its DSN covers this one too.
        let mut owed_fresh = Vec::with_capacity(owed.len());
        for r in owed {
            match self
                .ledger
                .earlier_copy_dsn(&m.content_hash, m.id, &r.address)?
            {
                Some((dsn_id, queue_id)) => {
                    let detail = format!("dsn {dsn_id}, made for the identical copy {queue_id}");
                    self.ledger
                        .write(|tx| tx.cover_by_dsn(&r, dsn_id, &detail))?;
                }
                None => owed_fresh.push(r),
            }
        }
        let owed = owed_fresh;
        if owed.is_empty() {
            return Ok(());
        }
        let work = &MessageWork {
            message: m.clone(),
            recipients: owed,
        };
        let original = read_verified(m).unwrap_or_default();
        let recipients: Vec<DsnRecipient> = work.recipients.iter().map(dsn_recipient).collect();
        let date = Local::now().fixed_offset();
        let message_id = format!(
            "spoolreplay.{}.{}.{}@{}",
            m.id,
            &m.content_hash[..m.content_hash.len().min(12)],
            date.timestamp_micros(),
            self.settings.incident.reporting_mta
        );
        let explanation = explanation(work, self.settings.incident);
        let ret = m.ret.as_deref().and_then(|r| match r {
            "HDRS" => Some(crate::address::ReturnContent::Headers),
            "FULL" => Some(crate::address::ReturnContent::Full),
            _ => None,
        });
        let request = DsnRequest {
            reporting_mta: &self.settings.incident.reporting_mta,
            incident: &self.settings.incident.name,
            explanation: &explanation,
            to: m.sender.as_str(),
            original: &original,
            envid: m.envid.as_deref(),
            ret,
            return_limit: self.settings.return_limit,
            arrival: m.arrival,
            queue_id: &m.queue_id,
            recipients: &recipients,
            date,
            message_id: &message_id,
            smtputf8: needs_smtputf8(work),
            from: self.settings.incident.dsn_from.as_deref(),
        };
        let bytes = dsn::build(&request)
            .with_context(|| format!("cannot build the DSN for message {}", m.queue_id))?;
        let id = self.ledger.write(|tx| {
            tx.record_dsn(
                m.id,
                m.sender.as_str(),
                &message_id,
                &bytes,
                &work.recipients,
            )
        })?;
        self.stats.dsns += 1;
        (self.on_event)(Event::Dsn {
            id,
            message: m,
            recipients: work.recipients.len(),
        });
        Ok(())
    }
}

/// Whether a recipient's NOTIFY (as stored: `NEVER` or a comma list) asks for a failure
/// DSN (RFC 3461 5.2.6: absent NOTIFY means FAILURE). A stored value that no longer parses
/// is treated as absent: better a DSN too many than a silent loss.
fn wants_failure_dsn(notify: Option<&str>) -> bool {
    let notify = notify.and_then(|n| crate::spool::eml::parse_notify(n).ok());
    dsn::dsn_owed(notify, Action::Failed)
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

/// The plain-words story for the DSN's human-readable part.
fn explanation(work: &MessageWork, incident: &Incident) -> String {
    let expired = work
        .recipients
        .iter()
        .any(|r| r.status.as_deref() == Some(STATUS_EXPIRED));
    let arrival = work.message.arrival.to_rfc2822();
    if expired {
        format!(
            "Your message arrived here on {arrival}, while the mailbox storage of the recipients \
             below was out of service. It was kept in the queue, but the storage did not come \
             back before the message's queue lifetime ran out, so it was not delivered."
        )
    } else {
        let window = work
            .message
            .window
            .as_deref()
            .and_then(|w| incident.windows.iter().find(|x| x.name == w))
            .and_then(|w| w.note.clone())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        format!(
            "Your message arrived here on {arrival}, during an outage of the mailbox storage of \
             the recipients below{window}. It could not be delivered to them."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::wants_failure_dsn;

    #[test]
    fn notify_decides_failure_dsns() {
        assert!(wants_failure_dsn(None));
        assert!(wants_failure_dsn(Some("FAILURE")));
        assert!(wants_failure_dsn(Some("SUCCESS,FAILURE,DELAY")));
        assert!(!wants_failure_dsn(Some("NEVER")));
        assert!(!wants_failure_dsn(Some("SUCCESS,DELAY")));
    }
}
