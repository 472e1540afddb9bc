//! The delivery loop (the dispatcher). Messages are handed one at a time, at the adaptive pace, to worker
//! threads that each own one store connection; each message is recorded in flight just
//! before it is handed over (intent first), in the same commit as the outcomes that came
//! back meanwhile (while waiting for the pace, outcomes are recorded as they come), so the
//! in-flight window is the message each worker is sending plus one waiting for a worker.
//! Deferred recipients are retried with backoff within the run until their message's
//! deadline.
//!
//! The workers live in `worker.rs`, recording outcomes in `record.rs`, the feeds of the
//! breaker, the pace and `--metrics` in `feed.rs`, `spoolreplay control` in `steer.rs`.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::feed::signal_of;
use super::record::{Health, worst};
use super::worker::{Attempt, Done, worker};
use super::{Event, Replay, Stop, apply_classification, classify_message};
use crate::address::Mailbox;
use crate::breaker::Breaker;
use crate::classify::Disposition;
use crate::ledger::{Change, DeliveryOrder, MessageWork, RcptState};
use crate::pace::{Claim, Grant, Pace, format_rate};

/// How often a dispatcher waiting on the store tells the printer it is still there.
const TICK: Duration = Duration::from_secs(1);

/// State of the dispatch loop.
pub(super) struct Dispatch {
    pub(super) pace: Pace,
    pub(super) pace_text: String,
    /// Handed to a worker and not yet recorded (`early` included).
    pub(super) outstanding: usize,
    /// Results taken while waiting for a free worker: recorded with the next commit.
    pub(super) early: Vec<Done>,
    pub(super) handled: u64,
    pub(super) store_down_since: Option<Instant>,
    pub(super) down_streak: u32,
    /// Recent (time, messages handled, recipients finished), for the measured pace and
    /// the ETA of `--metrics`.
    pub(super) samples: VecDeque<(Instant, u64, u64)>,
    pub(super) breaker: Breaker,
    /// The last `spoolreplay control` request obeyed, and when the ledger was last asked.
    pub(super) steered: i64,
    pub(super) steer_checked: Option<Instant>,
    pub(super) paused: bool,
}

impl Replay<'_> {
    /// Delivers everything deliverable, retrying deferred mail until its deadline.
    pub(super) fn deliver_all(&mut self) -> Result<()> {
        let workers = self.settings.concurrency.max(1);
        let factory = self.store;
        // Room for one message: the next one waits there for the first worker to finish,
        // so a worker never waits for the dispatcher's commit, and the dispatcher never
        // blocks in a send (it waits for results instead, see `until_a_worker_is_free`).
        // In flight: what the workers are sending, plus that one.
        let (job_tx, job_rx) = mpsc::sync_channel::<MessageWork>(1);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let jobs = Arc::clone(&job_rx);
                let done = done_tx.clone();
                scope.spawn(move || worker(factory, &jobs, &done));
            }
            drop(done_tx);
            let result = self.dispatch(&job_tx, &done_rx);
            drop(job_tx);
            // Turns booked and not used go back to the cluster at once.
            self.tokens.finish();
            result
        })
    }

    fn dispatch(&mut self, jobs: &SyncSender<MessageWork>, done: &Receiver<Done>) -> Result<()> {
        let workers = self.settings.concurrency.max(1);
        let rate = self.settings.pace.rate.map(|r| r.per_second());
        let pace = Pace::new(rate, self.settings.pace.max_bytes_rate);
        let mut d = Dispatch {
            pace_text: format!("pace {}", format_rate(pace.rate())),
            pace,
            outstanding: 0,
            early: Vec::new(),
            handled: 0,
            store_down_since: None,
            down_streak: 0,
            samples: VecDeque::new(),
            breaker: Breaker::new(self.settings.breaker),
            // Requests from before this run were for an earlier one.
            steered: self.ledger.last_steering_id()?,
            steer_checked: None,
            paused: false,
        };
        self.feed_gauges(&mut d)?;
        let mut after = 0;
        loop {
            if self.stats.stop.is_some() {
                return Ok(());
            }
            if self.is_interrupted() {
                self.stats.stop = Some(Stop::Interrupted);
                return Ok(());
            }
            // Nothing is outstanding between batches: the health of a pause here is Fine.
            self.hold_while_paused(done, &mut d)?;
            let now = self.now();
            // Only arrival order pages with a cursor (see `Ledger::deliverable_in`).
            let order = self.settings.order;
            if order != DeliveryOrder::Arrival {
                after = 0;
            }
            let batch = self.ledger.deliverable_in(
                order,
                after,
                self.settings.pace.batch_size,
                now.timestamp(),
            )?;
            let Some(last) = batch.last() else {
                if after != 0 {
                    after = 0; // a new sweep: mail deferred or requeued since is due again
                    continue;
                }
                match self.ledger.next_retry_at()? {
                    None => return Ok(()),
                    Some(at) => {
                        let wait = (at - now.timestamp()).max(1) as u64;
                        (self.on_event)(Event::Notice(&format!(
                            "waiting {wait}s for the next retry of deferred mail"
                        )));
                        self.nap(Duration::from_secs(wait));
                        continue;
                    }
                }
            };
            after = last.message.id;
            let batch = self.expire_due(batch)?;
            let mut health = Health::Fine;
            for work in batch {
                // Stop handing out work when the store is down or full, or on Ctrl-C: what
                // is not handed out stays pending, untouched.
                if health != Health::Fine || self.is_interrupted() {
                    after = work.message.id - 1;
                    break;
                }
                health = worst(health, self.hold_while_paused(done, &mut d)?);
                if health != Health::Fine || self.is_interrupted() {
                    after = work.message.id - 1;
                    break;
                }
                // Wait for the pace while recording whatever comes back meanwhile, so an
                // accepted message never waits in flight for the next one's turn.
                let Some(turn) = self.turn(done, &mut d, work.message.size, &mut health)? else {
                    after = work.message.id - 1;
                    break;
                };
                let wait = d
                    .pace
                    .wait(self.started.elapsed(), work.message.size)
                    .max(turn);
                if !wait.is_zero() {
                    health = worst(health, self.collect(done, &mut d, Instant::now() + wait)?);
                    if health != Health::Fine {
                        after = work.message.id - 1;
                        break;
                    }
                }
                // Across ledgers: a copy another member has is not handed over again.
                let work = match self.claim_copies(done, &mut d, work, &mut health)? {
                    Claimed::Send(work) => *work,
                    Claimed::Skip => continue,
                    Claimed::Stop(id) => {
                        after = id - 1;
                        break;
                    }
                };
                // Intent first, one message at a time: the in-flight window is the message
                // a worker is handing over, nothing more. The outcomes that came back
                // meanwhile go into the same commit: one fsync per message, not two. If
                // they say the store is down or full, nothing more is handed over.
                self.until_a_worker_is_free(done, &mut d, workers)?;
                let ready: Vec<Done> = d.early.drain(..).chain(done.try_iter()).collect();
                let (ready_health, handed) = self.settle_then_hand_over(ready, &mut d, &work)?;
                health = worst(health, ready_health);
                let Some(work) = handed else {
                    after = work.message.id - 1;
                    break;
                };
                crate::crash_hook::at("after-in-flight");
                // The channel has room (see `until_a_worker_is_free`): no wait on the store.
                let id = work.message.id;
                jobs.send(work).context("the delivery workers stopped")?;
                d.outstanding += 1;
                // An open breaker probes with one message: its reply decides what next.
                if d.breaker.is_open() {
                    after = id;
                    break;
                }
            }
            if !d.early.is_empty() {
                let early = std::mem::take(&mut d.early);
                health = worst(health, self.settle(early, &mut d)?);
            }
            while d.outstanding > 0 {
                let first = self.next_result(done, &mut d)?;
                health = worst(health, self.settle(with_ready(first, done), &mut d)?);
            }
            match health {
                Health::Fine => {
                    d.store_down_since = None;
                    d.down_streak = 0;
                    self.nap(self.settings.pace.pause);
                }
                Health::Full => return Ok(()),
                Health::Down => self.wait_for_store(&mut d, "unreachable"),
                Health::LosingReplies => {
                    self.wait_for_store(&mut d, "losing its replies after the final dot")
                }
                Health::Refusing => {
                    let reply = d.breaker.trip().map(|t| t.reply).unwrap_or_default();
                    let what = format!("refusing every recipient (`{reply}`)");
                    self.wait_for_store(&mut d, &what)
                }
            }
        }
    }

    /// The token source's turn for one message of `bytes` (a cluster member waits for
    /// the cluster's budget; paused, it records what comes back and asks again). `None`:
    /// stop handing out work (interrupted, or the store went unhealthy meanwhile).
    fn turn(
        &mut self,
        done: &Receiver<Done>,
        d: &mut Dispatch,
        bytes: u64,
        health: &mut Health,
    ) -> Result<Option<Duration>> {
        let mut told = false;
        loop {
            match self.tokens.take(bytes) {
                Grant::Go(wait) => return Ok(Some(wait)),
                Grant::Hold { wait, why } => {
                    if !told {
                        (self.on_event)(Event::Notice(&format!("{why}; waiting")));
                        told = true;
                    }
                    *health = worst(*health, self.collect(done, d, Instant::now() + wait)?);
                    if *health != Health::Fine || self.is_interrupted() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Claims the copies of `work` in the cluster (a run alone claims nothing): those
    /// another ledger delivered or is delivering are recorded `duplicate` of its copy;
    /// the rest is what to hand over. With `--cluster-dedupe strict` and the coordinator
    /// away, waits for it (recording what comes back), up to `--store-timeout`.
    fn claim_copies(
        &mut self,
        done: &Receiver<Done>,
        d: &mut Dispatch,
        mut work: MessageWork,
        health: &mut Health,
    ) -> Result<Claimed> {
        let canonical: Vec<String> = work
            .recipients
            .iter()
            .map(|r| Mailbox::canonical_key(&r.address))
            .collect();
        let mut since: Option<Instant> = None;
        let claims = loop {
            let claims = self.tokens.claim(&work.message.content_hash, &canonical);
            if !claims.contains(&Claim::Wait) {
                break claims;
            }
            let started = *since.get_or_insert_with(|| {
                (self.on_event)(Event::Notice(
                    "cluster coordinator away: waiting to check duplicates across ledgers (--cluster-dedupe strict)",
                ));
                Instant::now()
            });
            if started.elapsed() >= self.settings.retry.store_timeout {
                self.stats.stop = Some(Stop::StoreLost(format!(
                    "the cluster coordinator has been unreachable for {} (--cluster-dedupe strict)",
                    crate::throttle::format_duration(started.elapsed())
                )));
                return Ok(Claimed::Stop(work.message.id));
            }
            *health = worst(*health, self.collect(done, d, Instant::now() + TICK)?);
            if *health != Health::Fine || self.is_interrupted() {
                return Ok(Claimed::Stop(work.message.id));
            }
        };
        self.unchecked = claims.contains(&Claim::Unchecked);
        let mut theirs = Vec::new();
        let mut mine = Vec::new();
        for (r, claim) in work.recipients.drain(..).zip(claims) {
            match claim {
                Claim::Theirs { ledger, delivered } => {
                    let how = if delivered {
                        "delivered"
                    } else {
                        "being delivered"
                    };
                    theirs.push((
                        r,
                        format!("duplicate of the copy in ledger {ledger} ({how})"),
                    ));
                }
                _ => mine.push(r),
            }
        }
        work.recipients = mine;
        self.stats.cluster_duplicates += theirs.len() as u64;
        if !theirs.is_empty() {
            self.ledger.write(|tx| {
                for (r, why) in &theirs {
                    let change = Change {
                        detail: Some(why),
                        ..Change::default()
                    };
                    tx.set_state(r, RcptState::Duplicate, change)?;
                }
                Ok(())
            })?;
            for (r, why) in &theirs {
                (self.on_event)(Event::Outcome {
                    message: &work.message,
                    recipient: &r.address,
                    state: RcptState::Duplicate,
                    detail: why,
                });
            }
            self.share_progress(d);
        }
        Ok(if work.recipients.is_empty() {
            Claimed::Skip
        } else {
            Claimed::Send(Box::new(work))
        })
    }

    /// Tells the cluster (if any) how far this run is.
    fn share_progress(&mut self, d: &Dispatch) {
        let s = &self.stats;
        let counts = [
            ("delivered", s.delivered + s.already_there),
            ("deferred", s.deferred),
            ("failed", s.failed),
            ("held", s.held),
            ("uncertain", s.uncertain),
            ("duplicate", s.cluster_duplicates),
        ];
        self.tokens.progress(d.handled, &counts, &d.pace_text);
    }

    /// While every worker is busy and one more message waits for them in the channel,
    /// waits for a result (kept in `d.early`, recorded with the next commit), so the next
    /// hand-over never blocks on the store. Messages handed over and not yet answered are
    /// the busy workers plus the one waiting.
    fn until_a_worker_is_free(
        &mut self,
        done: &Receiver<Done>,
        d: &mut Dispatch,
        workers: usize,
    ) -> Result<()> {
        while d.outstanding - d.early.len() > workers {
            let result = self.next_result(done, d)?;
            d.early.push(result);
        }
        Ok(())
    }

    /// The next result from a worker, however long the store takes; the progress line is
    /// fed meanwhile, so a transaction blocked on a slow store is never silent.
    fn next_result(&mut self, done: &Receiver<Done>, d: &mut Dispatch) -> Result<Done> {
        loop {
            match done.recv_timeout(TICK) {
                Ok(result) => return Ok(result),
                Err(RecvTimeoutError::Timeout) => {
                    let text = format!("{}; waiting for the store", d.pace_text);
                    (self.on_event)(Event::Delivered {
                        messages: d.handled,
                        pace: &text,
                    });
                    self.feed_gauges(d)?;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the delivery workers stopped")
                }
            }
        }
    }

    /// Records results as they arrive until `until` (at least those already there).
    pub(super) fn collect(
        &mut self,
        done: &Receiver<Done>,
        d: &mut Dispatch,
        until: Instant,
    ) -> Result<Health> {
        let mut health = Health::Fine;
        if !d.early.is_empty() {
            let early = std::mem::take(&mut d.early);
            health = self.settle(early, d)?;
        }
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let result = if left.is_zero() || d.outstanding == 0 {
                match done.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) if d.outstanding == 0 && !left.is_zero() => {
                        std::thread::sleep(left);
                        return Ok(health);
                    }
                    Err(TryRecvError::Empty) => return Ok(health),
                    Err(TryRecvError::Disconnected) => {
                        anyhow::bail!("the delivery workers stopped")
                    }
                }
            } else {
                match done.recv_timeout(left) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => return Ok(health),
                    Err(RecvTimeoutError::Disconnected) => {
                        anyhow::bail!("the delivery workers stopped")
                    }
                }
            };
            health = worst(health, self.settle(with_ready(result, done), d)?);
        }
    }

    /// The store went away (or keeps losing replies): back off (1 s, 2 s, 4 s … 30 s)
    /// until `--store-timeout`. `what` says how it is unhealthy.
    fn wait_for_store(&mut self, d: &mut Dispatch, what: &str) {
        let since = *d.store_down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.settings.retry.store_timeout {
            self.stats.stop = Some(Stop::StoreLost(format!(
                "the store has been {what} for {}",
                crate::throttle::format_duration(since.elapsed())
            )));
            return;
        }
        d.down_streak += 1;
        let wait = Duration::from_secs(1 << d.down_streak.min(5).saturating_sub(1))
            .min(Duration::from_secs(30));
        (self.on_event)(Event::Notice(&format!(
            "store {what}; trying again in {}",
            crate::throttle::format_duration(wait)
        )));
        self.nap(wait);
    }

    /// Re-checks the deadline of a batch: deferred mail may have expired while it waited.
    fn expire_due(&mut self, batch: Vec<MessageWork>) -> Result<Vec<MessageWork>> {
        let now = self.now();
        let incident = self.settings.incident;
        let stats = &mut self.stats;
        self.ledger.write(|tx| {
            let mut keep = Vec::with_capacity(batch.len());
            for work in batch {
                let c = classify_message(incident, &work.message, now);
                if c.disposition == Disposition::Deliver {
                    keep.push(work);
                } else {
                    apply_classification(tx, incident, &work, &c, stats)?;
                }
            }
            Ok(keep)
        })
    }

    /// Records the results that came back together, in one ledger transaction, and feeds
    /// the pace. With several workers, results arrive while the dispatcher commits the
    /// previous ones; one commit (one fsync) for all of them instead of one each.
    fn settle(&mut self, batch: Vec<Done>, d: &mut Dispatch) -> Result<Health> {
        Ok(self.settle_and_mark(batch, d, None)?.0)
    }

    /// `settle`, and in the same transaction `next` goes in flight, unless the results
    /// say the store is down or full; returns `next` as recorded (in flight) if it may be
    /// handed over.
    fn settle_then_hand_over(
        &mut self,
        batch: Vec<Done>,
        d: &mut Dispatch,
        next: &MessageWork,
    ) -> Result<(Health, Option<MessageWork>)> {
        self.settle_and_mark(batch, d, Some(next))
    }

    fn settle_and_mark(
        &mut self,
        batch: Vec<Done>,
        d: &mut Dispatch,
        next: Option<&MessageWork>,
    ) -> Result<(Health, Option<MessageWork>)> {
        let settled = batch.len();
        let mut signals = Vec::with_capacity(settled);
        for done in &batch {
            d.outstanding -= 1;
            d.handled += 1;
            self.stats.messages += 1;
            crate::crash_hook::at("after-store");
            signals.extend(signal_of(&done.result));
            self.feed_breaker(done, d);
            if let (
                Some(m),
                Attempt::Store {
                    latency,
                    result: Ok(_),
                    ..
                },
            ) = (&self.metrics, &done.result)
            {
                m.transaction(*latency);
            }
        }
        // Replies that keep the breaker open hand nothing more over in this commit; the
        // next probe goes out after the wait, in a commit of its own.
        let refusing = settled > 0 && d.breaker.is_open();
        let next = next.filter(|_| !refusing);
        let (mut health, handed) = self.record_all(batch, next)?;
        if refusing {
            health = worst(health, Health::Refusing);
        }
        for signal in signals {
            if let Some(change) = d.pace.observe(self.started.elapsed(), signal) {
                d.pace_text = format!("pace {} ({})", format_rate(change.rate), change.reason);
                let text = d.pace_text.clone();
                (self.on_event)(Event::Notice(&text));
                self.tokens.publish(&change);
            }
        }
        for news in self.tokens.news() {
            (self.on_event)(Event::Notice(&news));
        }
        // A back-off or recovery elsewhere in the cluster: this run follows it.
        if let Some(change) = self.tokens.follow() {
            d.pace.follow(change.rate);
            d.pace_text = format!("pace {} ({})", format_rate(change.rate), change.reason);
            let text = d.pace_text.clone();
            (self.on_event)(Event::Notice(&text));
        }
        if settled > 0 {
            self.share_progress(d);
            let text = d.pace_text.clone();
            (self.on_event)(Event::Delivered {
                messages: d.handled,
                pace: &text,
            });
        }
        self.feed_gauges(d)?;
        Ok((health, handed))
    }
}

/// What the cluster's claims leave of a message.
enum Claimed {
    /// Hand over these recipients.
    Send(Box<MessageWork>),
    /// Every recipient is another ledger's copy: nothing to hand over.
    Skip,
    /// Stop handing out work, from this message id on.
    Stop(i64),
}

/// `first` and every other result already waiting: they are recorded together.
fn with_ready(first: Done, done: &Receiver<Done>) -> Vec<Done> {
    let mut batch = vec![first];
    batch.extend(done.try_iter());
    batch
}
