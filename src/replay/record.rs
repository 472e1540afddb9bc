//! Recording outcomes: what a message's trip to the store means for each recipient
//! (`Settled`), written to the ledger in one transaction together with the intent for the
//! next message (`mark_in_flight`), and what it means for the loop (`Health`).

use std::time::Duration;

use anyhow::Result;

use super::feed::feed_outcome;
use super::worker::{Attempt, Done};
use super::{Event, Replay, Stop, UncertainPolicy, redeliver_once};
use crate::address::Mailbox;
use crate::deliver::reply::Reply;
use crate::deliver::{Answer, Outcome, StoreError};
use crate::ledger::{Change, MessageWork, RcptState, Tx};

/// What recording an outcome means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    Fine,
    /// The store took the message but its reply after the final dot was lost (cut,
    /// timed out, too long, malformed): like `Down`, wait before handing it more, and
    /// stop after `--store-timeout` if it keeps happening.
    LosingReplies,
    /// The store could not be reached: wait and try again.
    Down,
    /// The store refuses every recipient alike (the circuit breaker is open): wait as
    /// for `Down`, then probe with one message at a time.
    Refusing,
    /// The store is full: stop.
    Full,
}

impl Replay<'_> {
    /// Writes the outcome of one attempt to the ledger.
    pub(super) fn record(&mut self, done: Done) -> Result<Health> {
        Ok(self.record_all(vec![done], None)?.0)
    }

    /// Writes the outcomes of attempts to the ledger, all in one transaction; in the same
    /// transaction `next` goes in flight if the outcomes leave the store healthy.
    pub(super) fn record_all(
        &mut self,
        batch: Vec<Done>,
        next: Option<&MessageWork>,
    ) -> Result<(Health, Option<MessageWork>)> {
        let now = self.now();
        let retry = self.settings.retry;
        let redeliver = self.settings.uncertain == UncertainPolicy::Redeliver;
        let mut health = Health::Fine;
        let mut recorded = Vec::with_capacity(batch.len());
        for done in batch {
            let r = self.settled_of(done)?;
            health = worst(health, r.health);
            recorded.push(r);
        }
        let next = next.filter(|_| health == Health::Fine);
        let unchecked = self.unchecked;
        let handed = self.ledger.write(|tx| {
            for rec in &recorded {
                for (r, s) in rec.work.recipients.iter().zip(&rec.outcomes) {
                    let next_attempt = (s.state == RcptState::Deferred).then(|| {
                        let wait = if s.retry_now {
                            Duration::ZERO
                        } else {
                            retry.backoff(r.attempts + 1)
                        };
                        now.timestamp() + wait.as_secs() as i64
                    });
                    let change = Change {
                        detail: Some(&s.detail),
                        status: s.status.as_deref(),
                        attempted_at: if s.retry_now { None } else { rec.at.as_deref() },
                        next_attempt,
                        remote: s.remote.as_deref(),
                        reply: s.reply.as_ref(),
                        audit_only: false,
                    };
                    tx.set_state(r, s.state, change)?;
                    if s.state == RcptState::Uncertain && redeliver {
                        let mut row = r.clone();
                        row.state = RcptState::Uncertain;
                        redeliver_once(tx, &row)?;
                    }
                }
            }
            next.map(|work| mark_in_flight(tx, work, unchecked))
                .transpose()
        })?;
        for rec in &recorded {
            for (r, s) in rec.work.recipients.iter().zip(&rec.outcomes) {
                if let Some(m) = &self.metrics {
                    feed_outcome(m, &rec.work.message, s, now);
                }
                if s.state == RcptState::Delivered {
                    let canonical = Mailbox::canonical_key(&r.address);
                    self.tokens
                        .confirm(&rec.work.message.content_hash, &canonical);
                }
                match s.state {
                    RcptState::Delivered if s.already => self.stats.already_there += 1,
                    RcptState::Delivered => self.stats.delivered += 1,
                    RcptState::Deferred => self.stats.deferred += 1,
                    RcptState::Failed => self.stats.failed += 1,
                    RcptState::Held => self.stats.held += 1,
                    RcptState::Uncertain => self.stats.uncertain += 1,
                    _ => {}
                }
                (self.on_event)(Event::Outcome {
                    message: &rec.work.message,
                    recipient: &r.address,
                    state: s.state,
                    detail: &s.detail,
                });
            }
        }
        Ok((health, handed))
    }

    /// What an attempt means for each of its recipients (and for the run: a full store
    /// stops it).
    fn settled_of(&mut self, done: Done) -> Result<Recorded> {
        let work = done.work;
        let (outcomes, at, health): (Vec<Settled>, Option<String>, Health) = match done.result {
            Attempt::Unreadable(why) => {
                self.stats.spool_changed += work.recipients.len() as u64;
                if self.stats.spool_changed_examples.len() < super::SPOOL_CHANGED_EXAMPLES {
                    self.stats.spool_changed_examples.push(why.clone());
                }
                (
                    work.recipients
                        .iter()
                        .map(|_| Settled::new(RcptState::Held, why.clone()))
                        .collect(),
                    None,
                    Health::Fine,
                )
            }
            Attempt::Store {
                result: Ok(results),
                at,
                ..
            } => {
                anyhow::ensure!(
                    results.len() == work.recipients.len(),
                    "the store answered {} outcomes for {} recipients of {}",
                    results.len(),
                    work.recipients.len(),
                    work.message.queue_id
                );
                let health = if results
                    .iter()
                    .any(|o| matches!(o, Outcome::Uncertain { .. }))
                {
                    Health::LosingReplies
                } else {
                    Health::Fine
                };
                (
                    results.into_iter().map(Settled::from).collect(),
                    Some(at),
                    health,
                )
            }
            Attempt::Store { result: Err(e), .. } => {
                let why = e.to_string();
                let health = match e {
                    StoreError::Full(_) => {
                        self.stats.stop = Some(Stop::StoreFull(why.clone()));
                        Health::Full
                    }
                    StoreError::Unavailable(_) => Health::Down,
                };
                let settled = work
                    .recipients
                    .iter()
                    .map(|_| Settled {
                        retry_now: true,
                        ..Settled::new(RcptState::Deferred, why.clone())
                    })
                    .collect();
                (settled, None, health)
            }
        };
        Ok(Recorded {
            work,
            outcomes,
            at,
            health,
        })
    }
}

/// An attempt's outcomes, ready to be written.
struct Recorded {
    work: MessageWork,
    outcomes: Vec<Settled>,
    at: Option<String>,
    health: Health,
}

/// Records intent: the message's recipients go in flight (inside the caller's
/// transaction). Returns the work as recorded.
/// Recipients go in flight; `unchecked`: the cluster could not be asked whether another
/// ledger has this copy, and the audit trail says so.
fn mark_in_flight(tx: &Tx<'_>, work: &MessageWork, unchecked: bool) -> Result<MessageWork> {
    let mut moved = work.clone();
    for r in &mut moved.recipients {
        let change = Change {
            detail: Some(if unchecked {
                "handed to the store; duplicates across ledgers not checked (cluster coordinator away)"
            } else {
                "handed to the store"
            }),
            audit_only: true,
            ..Change::default()
        };
        tx.set_state(r, RcptState::InFlight, change)?;
        r.state = RcptState::InFlight;
    }
    Ok(moved)
}

/// One recipient's outcome, as the ledger records it.
pub(super) struct Settled {
    pub(super) state: RcptState,
    pub(super) detail: String,
    pub(super) status: Option<String>,
    /// Already in the store from an interrupted run.
    pub(super) already: bool,
    /// Not a real attempt (the store was unreachable): due again at once.
    pub(super) retry_now: bool,
    /// The server whose reply `detail` is.
    pub(super) remote: Option<String>,
    /// The server reply `detail` is, when one decided the state.
    pub(super) reply: Option<Reply>,
}

impl Settled {
    fn new(state: RcptState, detail: String) -> Settled {
        Settled {
            state,
            detail,
            status: None,
            already: false,
            retry_now: false,
            remote: None,
            reply: None,
        }
    }

    /// A recipient the store did not take, with its answer.
    fn answered(state: RcptState, answer: Answer, remote: Option<String>) -> Settled {
        let detail = answer.to_string();
        Settled {
            remote,
            reply: match answer {
                Answer::Reply(reply) => Some(reply),
                Answer::Unexpected { .. } | Answer::Local(_) => None,
            },
            ..Settled::new(state, detail)
        }
    }
}

impl From<Outcome> for Settled {
    fn from(o: Outcome) -> Settled {
        match o {
            Outcome::Delivered { detail, remote } => Settled {
                remote,
                ..Settled::new(RcptState::Delivered, detail)
            },
            Outcome::AlreadyThere { detail } => Settled {
                already: true,
                ..Settled::new(
                    RcptState::Delivered,
                    format!("already in the store from an interrupted run: {detail}"),
                )
            },
            // A full mailbox is retried within its queue lifetime, even after a 552; the
            // status (x.2.2) is kept, so `report --affected` counts it and an expiry DSN
            // says the mailbox was full.
            Outcome::Deferred { reply, remote } if over_quota(&reply) => {
                let status = reply.reply().map(crate::dsn::status_for);
                Settled {
                    status,
                    ..Settled::answered(RcptState::Deferred, reply, remote)
                }
            }
            Outcome::Deferred { reply, remote } => {
                Settled::answered(RcptState::Deferred, reply, remote)
            }
            Outcome::Failed {
                reply,
                status,
                remote,
            } if over_quota(&reply) => Settled {
                status: Some(status),
                ..Settled::answered(RcptState::Deferred, reply, remote)
            },
            Outcome::Failed {
                reply,
                status,
                remote,
            } => Settled {
                status: Some(status),
                ..Settled::answered(RcptState::Failed, reply, remote)
            },
            Outcome::Uncertain { reply, remote } => {
                Settled::answered(RcptState::Uncertain, reply, remote)
            }
        }
    }
}

/// Whether the store's answer says the recipient's mailbox is full (a reply, not our
/// own words).
fn over_quota(answer: &Answer) -> bool {
    answer.reply().is_some_and(crate::dsn::reply_is_over_quota)
}

pub(super) fn worst(a: Health, b: Health) -> Health {
    match (a, b) {
        (Health::Full, _) | (_, Health::Full) => Health::Full,
        (Health::Down, _) | (_, Health::Down) => Health::Down,
        (Health::Refusing, _) | (_, Health::Refusing) => Health::Refusing,
        (Health::LosingReplies, _) | (_, Health::LosingReplies) => Health::LosingReplies,
        _ => Health::Fine,
    }
}
