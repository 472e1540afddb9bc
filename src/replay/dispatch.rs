//! The delivery loop (the dispatcher). Messages are handed, at the adaptive pace, to worker
//! threads that each own one store connection; each message is recorded in flight just
//! before it is handed over (intent first), in the same commit as the outcomes that came
//! back meanwhile (while waiting for the pace, outcomes are recorded as they come). The
//! in-flight window is the message each worker is sending plus what waits for a worker:
//! one when the run is paced, one per worker when nothing paces it (`in_flight_bound`);
//! the messages that fill free room go in flight in one commit (one fsync for all).
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
use crate::pace::{Claim, Grant, Outlook, Pace, format_rate};

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
    /// The time left as last measured (for `--metrics` and the cluster's heartbeat).
    pub(super) eta: Option<Duration>,
    /// The store's last refusal (reply text) and when (RFC 3339), for the cluster.
    pub(super) last_refusal: Option<(String, String)>,
}

impl Replay<'_> {
    /// Delivers everything deliverable, retrying deferred mail until its deadline.
    pub(super) fn deliver_all(&mut self) -> Result<()> {
        let workers = self.settings.concurrency.max(1);
        let factory = self.store;
        // In flight at most: what the workers are sending plus what waits for them
        // (`in_flight_bound`). The dispatcher counts that bound itself (`room`); the
        // channel has room for the largest bound, so a hand-over never blocks on the store.
        let (job_tx, job_rx) = mpsc::sync_channel::<MessageWork>(2 * workers);
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
            eta: None,
            last_refusal: None,
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
            // Messages that passed their turn, pace and claims and go in flight together,
            // in one commit, as soon as there is no room for more (or a wait comes).
            let mut group: Vec<MessageWork> = Vec::new();
            // Where a break resumes: the first message not handed over.
            let resume =
                |group: &[MessageWork], id: i64| group.first().map_or(id, |g| g.message.id) - 1;
            let mut broke = false;
            for work in batch {
                // Stop handing out work when the store is down or full, or on Ctrl-C: what
                // is not handed out stays pending, untouched (the group not yet committed
                // included).
                if health != Health::Fine || self.is_interrupted() {
                    after = resume(&group, work.message.id);
                    broke = true;
                    break;
                }
                health = worst(health, self.hold_while_paused(done, &mut d)?);
                if health != Health::Fine || self.is_interrupted() {
                    after = resume(&group, work.message.id);
                    broke = true;
                    break;
                }
                // Wait for the pace while recording whatever comes back meanwhile, so an
                // accepted message never waits in flight for the next one's turn.
                let Some(turn) = self.turn(done, &mut d, work.message.size, &mut health)? else {
                    after = resume(&group, work.message.id);
                    broke = true;
                    break;
                };
                let wait = d
                    .pace
                    .wait(self.started.elapsed(), work.message.size)
                    .max(turn);
                if !wait.is_zero() {
                    // What is gathered goes now, not after the wait.
                    if !group.is_empty() {
                        let first = group[0].message.id;
                        match self.hand_over(
                            std::mem::take(&mut group),
                            jobs,
                            done,
                            &mut d,
                            workers,
                        )? {
                            (h, true) => health = worst(health, h),
                            (h, false) => {
                                health = worst(health, h);
                                after = first - 1;
                                broke = true;
                                break;
                            }
                        }
                        if d.breaker.is_open() {
                            after = work.message.id - 1;
                            broke = true;
                            break;
                        }
                    }
                    health = worst(health, self.collect(done, &mut d, Instant::now() + wait)?);
                    if health != Health::Fine {
                        after = work.message.id - 1;
                        broke = true;
                        break;
                    }
                }
                // Across ledgers: a copy another member has is not handed over again.
                let work = match self.claim_copies(done, &mut d, work, &mut health)? {
                    Claimed::Send(work) => *work,
                    Claimed::Skip => continue,
                    Claimed::Stop(id) => {
                        after = resume(&group, id);
                        broke = true;
                        break;
                    }
                };
                // A copy whose duplicates could not be checked is audited so: alone.
                if self.unchecked && !group.is_empty() {
                    let first = group[0].message.id;
                    self.unchecked = false;
                    let (h, handed) =
                        self.hand_over(std::mem::take(&mut group), jobs, done, &mut d, workers)?;
                    self.unchecked = true;
                    health = worst(health, h);
                    if !handed || d.breaker.is_open() {
                        after = if handed {
                            work.message.id - 1
                        } else {
                            first - 1
                        };
                        broke = true;
                        break;
                    }
                }
                group.push(work);
                // Intent first: the group goes in flight in one commit, with the outcomes
                // that came back meanwhile (one fsync for all of them), as soon as it
                // fills the room left under the in-flight bound. An open breaker probes
                // with one message; a copy not checked across ledgers goes alone.
                // Only unpaced and alone: with a rate or a cluster's turns the next message
                // may have to wait, and this one must not wait with it.
                let unpaced = self.unpaced(&d);
                d.early.extend(done.try_iter());
                let bound = in_flight_bound(workers, unpaced);
                let room = bound.saturating_sub(d.outstanding - d.early.len());
                if unpaced && group.len() < room && !d.breaker.is_open() && !self.unchecked {
                    continue;
                }
                let first = group[0].message.id;
                let last = group[group.len() - 1].message.id;
                let (h, handed) =
                    self.hand_over(std::mem::take(&mut group), jobs, done, &mut d, workers)?;
                health = worst(health, h);
                if !handed {
                    after = first - 1;
                    broke = true;
                    break;
                }
                // An open breaker probes with one message: its reply decides what next.
                if d.breaker.is_open() {
                    after = last;
                    broke = true;
                    break;
                }
            }
            // The batch ended with a group gathered: it goes now.
            if !broke && !group.is_empty() {
                let first = group[0].message.id;
                let (h, handed) =
                    self.hand_over(std::mem::take(&mut group), jobs, done, &mut d, workers)?;
                health = worst(health, h);
                if !handed {
                    after = first - 1;
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
    pub(super) fn share_progress(&mut self, d: &Dispatch) {
        let s = &self.stats;
        let counts = [
            ("delivered", s.delivered + s.already_there),
            ("deferred", s.deferred),
            ("failed", s.failed),
            ("held", s.held),
            ("uncertain", s.uncertain),
            ("duplicate", s.cluster_duplicates),
        ];
        self.tokens.outlook(Outlook {
            eta: d.eta,
            refusal: d
                .last_refusal
                .as_ref()
                .map(|(text, at)| (text.as_str(), at.as_str())),
            paused: d.paused.then_some("control pause"),
        });
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
        Ok(self.settle_and_mark(batch, d, &[])?.0)
    }

    /// Hands `group` over: waits until the in-flight bound has room for it (at least one
    /// worker free), records it in flight in one commit with every result that came back
    /// meanwhile, and sends it to the workers. `(health, true)` when it went; false when
    /// the results say the store is down, full or refusing (nothing of `group` recorded).
    fn hand_over(
        &mut self,
        group: Vec<MessageWork>,
        jobs: &SyncSender<MessageWork>,
        done: &Receiver<Done>,
        d: &mut Dispatch,
        workers: usize,
    ) -> Result<(Health, bool)> {
        let bound = in_flight_bound(workers, self.unpaced(d));
        self.until_a_worker_is_free(done, d, bound.saturating_sub(group.len()))?;
        let ready: Vec<Done> = d.early.drain(..).chain(done.try_iter()).collect();
        let (health, handed) = self.settle_and_mark(ready, d, &group)?;
        if handed.is_empty() {
            return Ok((health, false));
        }
        crate::crash_hook::at("after-in-flight");
        for work in handed {
            // The channel has room for the whole in-flight bound: no wait on the store.
            jobs.send(work).context("the delivery workers stopped")?;
            d.outstanding += 1;
        }
        Ok((health, true))
    }

    /// Nothing paces this run (no rate, no byte rate, no cluster turns), so messages may
    /// be gathered into one in-flight commit and wait for a worker without waiting for
    /// anyone's turn.
    fn unpaced(&self, d: &Dispatch) -> bool {
        d.pace.rate().is_none()
            && self.settings.pace.max_bytes_rate.is_none()
            && self.tokens.grants_at_once()
    }

    fn settle_and_mark(
        &mut self,
        batch: Vec<Done>,
        d: &mut Dispatch,
        next: &[MessageWork],
    ) -> Result<(Health, Vec<MessageWork>)> {
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
        let next = if refusing { &[] } else { next };
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

/// How many messages may be in flight at once: each worker's message, and what waits for
/// the next free worker. Paced, one waits (its turn came; the next one's has not). Unpaced,
/// one per worker waits, marked in flight in the commit that follows the results: a worker
/// that finishes takes its next message at once instead of waiting for that commit's
/// fsync, which at 4 connections was as long as a message's exchange and halved the rate
/// (BENCHMARKS.md section 4). With one worker both are 2.
pub(super) fn in_flight_bound(workers: usize, unpaced: bool) -> usize {
    if unpaced { 2 * workers } else { workers + 1 }
}

/// `first` and every other result already waiting: they are recorded together.
fn with_ready(first: Done, done: &Receiver<Done>) -> Vec<Done> {
    let mut batch = vec![first];
    batch.extend(done.try_iter());
    batch
}

#[cfg(test)]
mod tests {
    use super::in_flight_bound;

    /// One worker's window is two messages either way: the crash drills (`run_lmtp`,
    /// `run_imap`) count on it. Unpaced, each worker gets one waiting; paced, one waits.
    #[test]
    fn the_in_flight_bound_is_one_waiting_per_worker_only_when_unpaced() {
        assert_eq!(in_flight_bound(1, true), 2);
        assert_eq!(in_flight_bound(1, false), 2);
        assert_eq!(in_flight_bound(4, true), 8);
        assert_eq!(in_flight_bound(4, false), 5);
    }
}
