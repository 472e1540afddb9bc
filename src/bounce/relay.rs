//! Sending DSNs through a relay (`spoolreplay bounces send`): from `<>`, to the original
//! sender, NOTIFY=NEVER where the relay speaks DSN (RFC 3461 6.1: no DSN about a DSN),
//! paced, each DSN recorded before and after it goes, so a crash never sends one twice:
//! a DSN caught mid-send is `uncertain` and only sent again on request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::DateTime;

use crate::address::{Notify, ReversePath};
use crate::deliver::{Answer, Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::ledger::{DsnFilter, DsnRow, Ledger, SendState};
use crate::pace::{Pace, PaceChange, PushBack, Signal};

/// The default of `bounces send --rate`: slow enough that a provider just back from an
/// outage does not look like a spam run to the receivers of its DSNs.
pub const DEFAULT_RATE: f64 = 10.0;

/// What became of the DSNs to one destination domain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DomainSend {
    pub sent: u64,
    pub deferred: u64,
    pub refused: u64,
    pub uncertain: u64,
}

#[derive(Debug, Default, Clone)]
pub struct SendStats {
    pub sent: u64,
    pub deferred: u64,
    pub failed: u64,
    pub uncertain: u64,
    /// Left in `sending` by a crash: now uncertain.
    pub recovered_uncertain: u64,
    /// Why sending stopped early, if it did.
    pub stopped: Option<String>,
    pub interrupted: bool,
    /// Per destination domain (the DSN's envelope recipient's, lowercased).
    pub by_domain: BTreeMap<String, DomainSend>,
}

/// One DSN's fate, for the printer.
pub struct Sent<'a> {
    pub dsn: &'a DsnRow,
    pub state: SendState,
    pub reply: &'a str,
    /// The change of pace this DSN's reply caused (a 4xx from the relay halves it).
    pub pace: Option<PaceChange>,
}

pub struct Sender<'a> {
    pub ledger: &'a mut Ledger,
    pub relay: &'a mut dyn Deliverer,
    pub pace: Pace,
    /// At most this many DSNs per second to one destination domain.
    pub per_domain_rate: Option<f64>,
    pub resend_uncertain: bool,
    pub interrupted: &'a AtomicBool,
    pub on_sent: &'a mut dyn FnMut(Sent<'_>),
}

impl Sender<'_> {
    pub fn run(&mut self) -> Result<SendStats> {
        let mut stats = SendStats::default();
        // A DSN left `sending` by a crash may or may not be at the relay.
        for dsn in self.ledger.dsns(DsnFilter::Sending)? {
            self.ledger.write(|tx| {
                tx.set_send_state(
                    dsn.id,
                    SendState::Sending,
                    SendState::Uncertain,
                    Some("the sender stopped while this DSN was being sent"),
                )
            })?;
            stats.recovered_uncertain += 1;
        }
        let started = Instant::now();
        // Earliest time the next DSN to each domain may go.
        let mut domain_next: HashMap<String, Duration> = HashMap::new();
        let queue = self.ledger.dsns(DsnFilter::Unsent {
            resend_uncertain: self.resend_uncertain,
        })?;
        for dsn in &queue {
            if self.interrupted.load(Ordering::SeqCst) {
                stats.interrupted = true;
                break;
            }
            let content = self
                .ledger
                .dsn_content(dsn.id)?
                .with_context(|| format!("DSN {} vanished from the ledger", dsn.id))?;
            let domain = domain_of(&dsn.envelope_to);
            let now = started.elapsed();
            let mut wait = self.pace.wait(now, content.len() as u64);
            if let Some(rate) = self.per_domain_rate {
                let at = domain_next.entry(domain.clone()).or_default();
                let start = (now + wait).max(*at);
                *at = start + Duration::from_secs_f64(1.0 / rate);
                wait = start - now;
            }
            std::thread::sleep(wait);
            // A stop asked for during the pace's wait: this DSN has not gone yet.
            if !wait.is_zero() && self.interrupted.load(Ordering::SeqCst) {
                stats.interrupted = true;
                break;
            }
            self.ledger
                .write(|tx| tx.set_send_state(dsn.id, dsn.send_state, SendState::Sending, None))?;
            crate::crash_hook::at("after-dsn-sending");
            let sent_at = Instant::now();
            let result = self.send_one(dsn, &content);
            crate::crash_hook::at("after-dsn-send");
            let signal = match &result {
                Ok(Outcome::Deferred { reply, .. }) => Some(Signal::PushBack(
                    PushBack::TransientReply(reply.reply().map_or(451, |r| r.code)),
                )),
                Ok(_) => Some(Signal::Healthy {
                    latency: sent_at.elapsed(),
                }),
                Err(_) => None,
            };
            let pace = signal.and_then(|s| self.pace.observe(started.elapsed(), s));
            let counts = stats.by_domain.entry(domain).or_default();
            match &result {
                Ok(Outcome::Delivered { .. } | Outcome::AlreadyThere { .. }) => counts.sent += 1,
                Ok(Outcome::Deferred { .. }) => counts.deferred += 1,
                Ok(Outcome::Failed { .. }) => counts.refused += 1,
                Ok(Outcome::Uncertain { .. }) => counts.uncertain += 1,
                Err(_) => {}
            }
            let (state, reply) = match result {
                Ok(Outcome::Delivered { detail, .. } | Outcome::AlreadyThere { detail }) => {
                    stats.sent += 1;
                    (SendState::Sent, detail)
                }
                Ok(Outcome::Deferred { reply, .. }) => {
                    stats.deferred += 1;
                    (SendState::Pending, reply.to_string())
                }
                Ok(Outcome::Failed { reply, .. }) => {
                    stats.failed += 1;
                    (SendState::Failed, reply.to_string())
                }
                Ok(Outcome::Uncertain { reply, .. }) => {
                    stats.uncertain += 1;
                    (SendState::Uncertain, reply.to_string())
                }
                Err(e) => {
                    // Nothing reached the relay: back to pending, and stop.
                    let why = e.to_string();
                    self.ledger.write(|tx| {
                        tx.set_send_state(
                            dsn.id,
                            SendState::Sending,
                            SendState::Pending,
                            Some(&why),
                        )
                    })?;
                    stats.stopped = Some(why);
                    break;
                }
            };
            self.ledger
                .write(|tx| tx.set_send_state(dsn.id, SendState::Sending, state, Some(&reply)))?;
            (self.on_sent)(Sent {
                dsn,
                state,
                reply: &reply,
                pace,
            });
        }
        Ok(stats)
    }
}

/// The domain of a DSN's envelope recipient, lowercased (the whole address without `@`).
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .to_ascii_lowercase()
}

impl Sender<'_> {
    fn send_one(&mut self, dsn: &DsnRow, content: &[u8]) -> Result<Outcome, StoreError> {
        let arrival = DateTime::parse_from_rfc3339(&dsn.created_at)
            .unwrap_or_else(|_| chrono::Local::now().fixed_offset());
        let key = format!("dsn-{}", dsn.id);
        let delivery = Delivery {
            message_key: &key,
            sender: &ReversePath::Null,
            content,
            arrival,
            recovering: false,
            envid: None,
            ret: None,
        };
        let never = Notify {
            never: true,
            ..Notify::default()
        };
        let recipient = RecipientSpec {
            address: &dsn.envelope_to,
            orcpt: None,
            notify: Some(never),
        };
        let mut outcomes = self.relay.deliver(&delivery, &[recipient])?;
        Ok(outcomes.pop().unwrap_or(Outcome::Deferred {
            reply: Answer::Local("the relay gave no answer for the recipient".into()),
            remote: None,
        }))
    }
}
