//! The delivery loop. Messages are handed one at a time, at the adaptive pace, to worker
//! threads that each own one store connection; each message is recorded in flight just
//! before it is handed over (intent first), in the same commit as the outcomes that came
//! back meanwhile (while waiting for the pace, outcomes are recorded as they come), so the
//! in-flight window is the message each worker is sending plus one waiting for a worker.
//! Deferred recipients are retried with backoff within the run until their message's
//! deadline.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Local;

use super::{
    Event, Replay, Stop, UncertainPolicy, apply_classification, classify_message, read_verified,
    redeliver_once,
};
use crate::address::Mailbox;
use crate::breaker::{self, Breaker};
use crate::classify::Disposition;
use crate::deliver::reply::Reply;
use crate::deliver::{Answer, Deliverer, Delivery, Outcome, RecipientSpec, StoreError};
use crate::ledger::{Change, DeliveryOrder, MessageWork, RcptState, Steer, Tx};
use crate::pace::{self, Claim, Grant, Pace, PushBack, Signal, format_rate};
use crate::throttle::RateSpec;

/// How often a dispatcher waiting on the store tells the printer it is still there.
const TICK: Duration = Duration::from_secs(1);

/// One message's trip to the store.
pub(super) struct Done {
    work: MessageWork,
    result: Attempt,
}

impl Done {
    /// What the store said per recipient, when it was reached.
    pub(super) fn outcomes(&self) -> Option<&[Outcome]> {
        match &self.result {
            Attempt::Store { result: Ok(o), .. } => Some(o),
            _ => None,
        }
    }
}

enum Attempt {
    /// The spool file changed or vanished since ingest.
    Unreadable(String),
    Store {
        result: Result<Vec<Outcome>, StoreError>,
        latency: Duration,
        at: String,
    },
}

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

/// Reads the message and hands it to `store` for its recipients.
pub(super) fn attempt(store: &mut dyn Deliverer, work: &MessageWork, recovering: bool) -> Done {
    let m = &work.message;
    let content = match read_verified(m) {
        Ok(c) => c,
        Err(why) => {
            return Done {
                work: work.clone(),
                result: Attempt::Unreadable(why),
            };
        }
    };
    let recipients: Vec<RecipientSpec<'_>> = work
        .recipients
        .iter()
        .map(|r| RecipientSpec {
            address: &r.address,
            orcpt: r.orcpt.as_deref(),
            notify: r.notify,
        })
        .collect();
    let delivery = Delivery {
        message_key: &m.content_hash,
        sender: &m.sender,
        content: &content,
        arrival: m.arrival,
        recovering,
        envid: m.envid.as_deref(),
        ret: m.ret,
    };
    let at = Local::now().fixed_offset().to_rfc3339();
    let started = Instant::now();
    let result = store.deliver(&delivery, &recipients);
    Done {
        work: work.clone(),
        result: Attempt::Store {
            result,
            latency: started.elapsed(),
            at,
        },
    }
}

/// A worker: one store connection, made on first use and again after a store error.
fn worker(
    factory: &super::StoreFactory<'_>,
    jobs: &Mutex<Receiver<MessageWork>>,
    done: &mpsc::Sender<Done>,
) {
    let mut store: Option<Box<dyn Deliverer>> = None;
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(work) = job else { return };
        let result = match &mut store {
            Some(s) => attempt(s.as_mut(), &work, false),
            None => match factory() {
                Ok(s) => attempt(store.insert(s).as_mut(), &work, false),
                Err(e) => Done {
                    work,
                    result: Attempt::Store {
                        result: Err(e),
                        latency: Duration::ZERO,
                        at: String::new(),
                    },
                },
            },
        };
        if matches!(&result.result, Attempt::Store { result: Err(_), .. }) {
            store = None;
        }
        if done.send(result).is_err() {
            return;
        }
    }
}

/// State of the dispatch loop.
struct Dispatch {
    pace: Pace,
    pace_text: String,
    /// Handed to a worker and not yet recorded (`early` included).
    outstanding: usize,
    /// Results taken while waiting for a free worker: recorded with the next commit.
    early: Vec<Done>,
    handled: u64,
    store_down_since: Option<Instant>,
    down_streak: u32,
    /// Recent (time, messages handled, recipients finished), for the measured pace and
    /// the ETA of `--metrics`.
    samples: VecDeque<(Instant, u64, u64)>,
    breaker: Breaker,
    /// The last `spoolreplay control` request obeyed, and when the ledger was last asked.
    steered: i64,
    steer_checked: Option<Instant>,
    paused: bool,
}

/// How often the run looks for `spoolreplay control` requests.
const STEER_EVERY: Duration = Duration::from_millis(500);

/// How often the gauges of `--metrics` are refreshed (one `GROUP BY state` each time).
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// The window the measured pace and the ETA average over.
const METRICS_WINDOW: Duration = Duration::from_secs(30);

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
    fn collect(
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

    /// Obeys new `spoolreplay control` requests (at most every `STEER_EVERY`), then,
    /// while paused, records what comes back and waits for `resume` (or a signal).
    fn hold_while_paused(&mut self, done: &Receiver<Done>, d: &mut Dispatch) -> Result<Health> {
        let mut health = Health::Fine;
        loop {
            self.steer(d)?;
            if !d.paused || self.is_interrupted() {
                return Ok(health);
            }
            health = worst(health, self.collect(done, d, Instant::now() + STEER_EVERY)?);
            self.feed_gauges(d)?;
        }
    }

    fn steer(&mut self, d: &mut Dispatch) -> Result<()> {
        if d.steer_checked.is_some_and(|t| t.elapsed() < STEER_EVERY) {
            return Ok(());
        }
        d.steer_checked = Some(Instant::now());
        for (id, request) in self.ledger.steering_after(d.steered)? {
            d.steered = id;
            let text = match request {
                Steer::Pause => {
                    d.paused = true;
                    "paused by `spoolreplay control pause`: nothing more is handed to the store until `spoolreplay control resume`".to_string()
                }
                Steer::Resume => {
                    d.paused = false;
                    "resumed by `spoolreplay control resume`".to_string()
                }
                Steer::Rate(r) => match r.parse::<RateSpec>() {
                    Ok(spec) => {
                        d.pace =
                            Pace::new(Some(spec.per_second()), self.settings.pace.max_bytes_rate);
                        d.pace_text = format!(
                            "pace {} (set by spoolreplay control)",
                            format_rate(d.pace.rate())
                        );
                        format!("pace set to {spec} by `spoolreplay control rate`")
                    }
                    Err(e) => format!("ignored `spoolreplay control rate {r}`: {e}"),
                },
            };
            if let Some(m) = &self.metrics {
                m.paused(d.paused);
            }
            (self.on_event)(Event::Steered(&text));
        }
        Ok(())
    }

    /// Tells the circuit breaker each recipient's reply, and the printer when it opens
    /// or closes.
    fn feed_breaker(&mut self, done: &Done, d: &mut Dispatch) {
        let Attempt::Store {
            result: Ok(outcomes),
            at,
            ..
        } = &done.result
        else {
            return;
        };
        for (r, o) in done.work.recipients.iter().zip(outcomes) {
            let text;
            let reply = match o {
                Outcome::Deferred {
                    reply,
                    remote: Some(_),
                } if reply.reply().is_some_and(|r| (400..500).contains(&r.code)) => {
                    text = reply.to_string();
                    breaker::Reply::Transient(&text)
                }
                Outcome::Delivered { .. }
                | Outcome::AlreadyThere { .. }
                | Outcome::Failed { .. } => breaker::Reply::Answered,
                // A lost reply or a refusal that is not the store's says nothing either way.
                _ => continue,
            };
            match d.breaker.observe(&r.address, reply, at) {
                Some(breaker::Change::Opened(t)) => {
                    (self.on_event)(Event::Alert(&format!(
                        "the store refused the last {} recipients ({} mailboxes) since {} with a temporary error, the last `{}`: treating it as unhealthy, waiting and then trying one message at a time (exit 75 after --store-timeout)",
                        t.recipients, t.mailboxes, t.since, t.reply
                    )));
                }
                Some(breaker::Change::Closed) => {
                    (self.on_event)(Event::Alert(
                        "the store accepts recipients again: back to the normal pace",
                    ));
                }
                None => {}
            }
        }
    }

    /// Refreshes the gauges of `--metrics` (at most every `METRICS_EVERY`): recipients
    /// per state from the ledger, the measured pace and its ceiling, the ETA.
    fn feed_gauges(&mut self, d: &mut Dispatch) -> Result<()> {
        let Some(m) = self.metrics.clone() else {
            return Ok(());
        };
        let now = Instant::now();
        if d.samples
            .back()
            .is_some_and(|(t, ..)| now.duration_since(*t) < METRICS_EVERY)
        {
            return Ok(());
        }
        let finished = self.stats.delivered + self.stats.already_there + self.stats.failed;
        d.samples.push_back((now, d.handled, finished));
        while d.samples.len() > 2
            && d.samples
                .front()
                .is_some_and(|(t, ..)| now.duration_since(*t) > METRICS_WINDOW)
        {
            d.samples.pop_front();
        }
        let counts = self.ledger.state_counts()?;
        m.set_recipients(&counts);
        let Some(&(since, handled, settled)) = d.samples.front() else {
            return Ok(());
        };
        let secs = now.duration_since(since).as_secs_f64();
        let per_second = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        m.pace(per_second(d.handled - handled), d.pace.rate());
        let open: u64 = counts
            .iter()
            .filter(|(s, _)| {
                matches!(
                    s,
                    RcptState::Pending | RcptState::Deferred | RcptState::InFlight
                )
            })
            .map(|(_, n)| *n)
            .sum();
        let rate = per_second(finished - settled);
        m.eta(match open {
            0 => Some(Duration::ZERO),
            _ if rate > 0.0 => Some(Duration::from_secs_f64(open as f64 / rate)),
            _ => None,
        });
        Ok(())
    }

    /// Writes the outcome of one attempt to the ledger.
    pub(super) fn record(&mut self, done: Done) -> Result<Health> {
        Ok(self.record_all(vec![done], None)?.0)
    }

    /// Writes the outcomes of attempts to the ledger, all in one transaction; in the same
    /// transaction `next` goes in flight if the outcomes leave the store healthy.
    fn record_all(
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

/// One recipient's outcome for `--metrics`: its count, its reply's class (when a server
/// replied), and for a delivery the time since the message arrived.
fn feed_outcome(
    m: &crate::metrics::Metrics,
    message: &crate::ledger::MessageRow,
    s: &Settled,
    now: chrono::DateTime<chrono::FixedOffset>,
) {
    use crate::metrics::DeliveryOutcome;
    let outcome = match s.state {
        RcptState::Delivered => DeliveryOutcome::Delivered,
        RcptState::Deferred => DeliveryOutcome::Deferred,
        RcptState::Failed => DeliveryOutcome::Failed,
        RcptState::Uncertain => DeliveryOutcome::Uncertain,
        _ => return,
    };
    let code = s.remote.as_ref().and(s.reply.as_ref()).map(|r| r.code);
    m.outcome(outcome, code);
    if s.state == RcptState::Delivered && !s.already {
        m.delivered_after((now - message.arrival).to_std().unwrap_or_default());
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

/// One recipient's outcome, as the ledger records it.
struct Settled {
    state: RcptState,
    detail: String,
    status: Option<String>,
    /// Already in the store from an interrupted run.
    already: bool,
    /// Not a real attempt (the store was unreachable): due again at once.
    retry_now: bool,
    /// The server whose reply `detail` is.
    remote: Option<String>,
    /// The server reply `detail` is, when one decided the state.
    reply: Option<Reply>,
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

/// What an attempt tells the pace.
fn signal_of(result: &Attempt) -> Option<Signal> {
    match result {
        Attempt::Unreadable(_) => None,
        Attempt::Store {
            result: Err(StoreError::Unavailable(_)),
            ..
        } => Some(Signal::PushBack(PushBack::ConnectionFailed)),
        Attempt::Store {
            result: Err(StoreError::Full(_)),
            ..
        } => None,
        Attempt::Store {
            result: Ok(outcomes),
            latency,
            ..
        } => {
            let pushback = outcomes.iter().find_map(|o| match o {
                Outcome::Deferred { reply, .. } => reply.reply().and_then(pace::pushback_of),
                _ => None,
            });
            let timeout = outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Uncertain { .. }));
            Some(match (pushback, timeout) {
                (Some(why), _) => Signal::PushBack(why),
                (None, true) => Signal::PushBack(PushBack::Timeout),
                (None, false) => Signal::Healthy { latency: *latency },
            })
        }
    }
}

fn worst(a: Health, b: Health) -> Health {
    match (a, b) {
        (Health::Full, _) | (_, Health::Full) => Health::Full,
        (Health::Down, _) | (_, Health::Down) => Health::Down,
        (Health::Refusing, _) | (_, Health::Refusing) => Health::Refusing,
        (Health::LosingReplies, _) | (_, Health::LosingReplies) => Health::LosingReplies,
        _ => Health::Fine,
    }
}
