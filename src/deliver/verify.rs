//! `--verify-store imap://…`: an LMTP or SMTP store whose mailboxes can be read over IMAP
//! becomes `verifiable`. Each copy is sent in its own transaction with our trace field
//! (`imap::trace_field`, one id per content and mailbox) on top, so the copy can be found
//! again; a delivery being recovered (a crash's in-flight work, or `--uncertain verify`) is
//! first looked for in the recipient's INBOX, and sent only if it is not there.
//!
//! One transaction per recipient costs throughput (one DATA per copy instead of per
//! message), which is why the trace field is added only with `--verify-store`: without it,
//! LMTP and SMTP copies are sent as before.

use super::imap::{ImapStore, trace_field};
use super::{Answer, Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::address::Mailbox;
use crate::sanitize;

/// A delivering store plus the IMAP view of the same mailboxes.
pub struct VerifiedStore {
    inner: Box<dyn Deliverer>,
    imap: ImapStore,
    /// The name our trace field says the copy passed (`--hello-name`'s default).
    host: String,
    /// `LMTP` or `ESMTP`, for the trace field.
    with: &'static str,
}

impl VerifiedStore {
    pub fn new(
        inner: Box<dyn Deliverer>,
        imap: ImapStore,
        host: String,
        with: &'static str,
    ) -> VerifiedStore {
        VerifiedStore {
            inner,
            imap,
            host,
            with,
        }
    }
}

impl Deliverer for VerifiedStore {
    fn describe(&self) -> String {
        format!(
            "{} (verified in {})",
            self.inner.describe(),
            self.imap.describe()
        )
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.inner.probe()
    }

    fn verifiable(&self) -> bool {
        true
    }

    fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(recipients.len());
        for spec in recipients {
            if delivery.recovering {
                match self.imap.look_for(delivery, spec.address, None) {
                    Ok(Some(detail)) => {
                        outcomes.push(Outcome::AlreadyThere { detail });
                        continue;
                    }
                    Ok(None) => {}
                    Err(why) => {
                        // Sending now could make a second copy.
                        outcomes.push(Outcome::Uncertain {
                            reply: Answer::Local(format!(
                                "could not look in mailbox {} for an earlier copy: {}",
                                sanitize::for_terminal(spec.address),
                                sanitize::for_terminal(&why)
                            )),
                            remote: None,
                        });
                        continue;
                    }
                }
            }
            let mailbox = Mailbox::canonical_key(spec.address);
            let field = trace_field(delivery, spec.address, &mailbox, &self.host, self.with);
            let mut content = Vec::with_capacity(field.len() + delivery.content.len());
            content.extend_from_slice(field.as_bytes());
            content.extend_from_slice(delivery.content);
            let traced = Delivery {
                content: &content,
                ..*delivery
            };
            match self.inner.deliver(&traced, std::slice::from_ref(spec)) {
                Ok(mut one) => outcomes.append(&mut one),
                Err(e) => return super::rest_deferred(outcomes, recipients.len(), e),
            }
        }
        Ok(outcomes)
    }
}
