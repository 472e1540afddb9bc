//! Several runs, one store: a cluster-wide pace and status on Redis (`run --cluster URL`).
//!
//! The only user of the `redis` crate. Every run given the same URL and name is one
//! cluster. Its budget (`--rate`, `--max-bytes-rate`) is one GCRA schedule kept in Redis
//! and advanced by a Lua script that reads the server's clock (`TIME`), so the members'
//! clocks do not matter. A member books a few turns at a time (a lease), so Redis is asked
//! once per lease, not once per message; turns are booked in order, so a member alone gets
//! every turn and a member that stops booking leaves its turns to the others at once.
//! A back-off is published with its reason and the member that saw it, and every member
//! follows it at its next lease. If Redis goes away mid-run, the member goes on alone at
//! the share it last had (never more) and tries to reconnect with back-off; nothing is
//! queued for later.

mod admin;
mod scripts;
pub mod slots;
pub mod url;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use redis::{Commands, Connection, Script};

use crate::pace::{Claim, Grant, Outlook, PaceChange, TokenSource, format_rate};
pub use admin::{Admin, ClusterStatus, MemberStatus};
use scripts::{BEAT, CLAIM, GIVE_BACK, TAKE};
pub use slots::Slots;
pub use url::ClusterUrl;

/// How long a lease lasts at the cluster's rate: short, so a change of pace reaches every
/// member well within a second, and long enough that Redis is not on every message's path.
const LEASE_SPAN: f64 = 0.05;
/// At most this many turns in one lease ("a few at a time").
const LEASE_MAX: u32 = 8;
/// A member's share is what it got over this long.
const SHARE_WINDOW: Duration = Duration::from_secs(2);
/// A member whose heartbeat is older than this is shown as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Heartbeats at most this often.
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// Waits between reconnection attempts grow to this.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Connect, read and write timeout for every Redis command: a coordinator that does not
/// answer is treated as gone, never waited for without end.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A shared pace nobody changed for this long is forgotten (seconds), so yesterday's
/// back-off does not slow today's run.
const PACE_TTL: u64 = 600;
/// A claim not confirmed within this long expires (a member that died holding it): longer
/// than one delivery can take (twice the default 5-minute reply timeout, and some).
const CLAIM_TTL: Duration = Duration::from_secs(15 * 60);
/// A delivered copy is remembered this long (seconds): longer than any recovery.
const DELIVERED_TTL: u64 = 30 * 24 * 3600;
/// Confirmations of delivered copies wait at most this long, or for this many, before
/// they are sent; until then they ride with the next claim, in its round trip. A claim
/// lives `CLAIM_TTL`, so a confirmation a second late changes nothing for the others; a
/// member killed meanwhile leaves its claims to expire, as one killed before confirming.
const CONFIRM_WITHIN: Duration = Duration::from_secs(1);
const CONFIRM_MAX: usize = 64;
/// Member records live this long after their last heartbeat (seconds).
const MEMBER_TTL: u64 = 3600;

/// The names of one cluster's keys.
#[derive(Debug, Clone)]
struct Keys {
    tokens: String,
    pace: String,
    paused: String,
    members: String,
    /// Store connections: slot token → expiry (ms of Redis time), and the queue for them.
    slots: String,
    waiters: String,
    seen: String,
    prefix: String,
}

impl Keys {
    fn new(name: &str) -> Keys {
        // The braces make every key of one cluster hash to one slot (Redis Cluster).
        let prefix = format!("spoolreplay:{{{name}}}");
        Keys {
            tokens: format!("{prefix}:tokens"),
            pace: format!("{prefix}:pace"),
            paused: format!("{prefix}:paused"),
            members: format!("{prefix}:members"),
            slots: format!("{prefix}:slots"),
            waiters: format!("{prefix}:slot-waiters"),
            seen: format!("{prefix}:slot-waiters-seen"),
            prefix,
        }
    }

    fn member(&self, id: &str) -> String {
        format!("{}:member:{id}", self.prefix)
    }

    fn claim(&self, content: &str, recipient: &str) -> String {
        format!("{}:claim:{content}:{recipient}", self.prefix)
    }
}

/// Opens a connection with timeouts on every step.
fn connect(url: &ClusterUrl) -> redis::RedisResult<Connection> {
    let client = redis::Client::open(url.connection_info()?)?;
    let conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Why the coordinator could not be used, for `error:` lines.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the cluster coordinator {url}: {cause}")]
pub struct Unreachable {
    pub url: String,
    pub cause: String,
}

fn unreachable(url: &ClusterUrl, e: &redis::RedisError) -> Unreachable {
    Unreachable {
        url: url.to_string(),
        cause: e.to_string(),
    }
}

/// One `run` in a cluster: the [`TokenSource`] the replay loop takes its turns from.
pub struct Member {
    url: ClusterUrl,
    keys: Keys,
    id: String,
    ledger: String,
    conn: Option<Connection>,
    take: Script,
    give_back: Script,
    beat: Script,
    claim: Script,
    /// Who claims copies: the host and the ledger's path (the same across reruns).
    owner: String,
    /// `--cluster-dedupe strict`: without the coordinator, wait rather than send unchecked.
    strict: bool,
    /// The operator's ceilings, which are the cluster's totals.
    ceiling: Option<f64>,
    bytes_ceiling: Option<f64>,
    /// Turns left in the current lease, and bytes.
    lease_left: u32,
    lease_bytes_left: u64,
    /// When the next turn of the lease (or of the local fallback) is due, and the spacing.
    next_at: Instant,
    spacing: Duration,
    /// Messages per second this member got lately: the most it may take alone.
    share: Option<f64>,
    /// The leases of the last [`SHARE_WINDOW`]: when each began, and its turns.
    recent: VecDeque<(Instant, u32)>,
    /// The shared pace last seen (milli-messages/s), and a change to follow.
    seen_rate: Option<i64>,
    follow: Option<PaceChange>,
    /// Disconnected: when to try again, and how many tries failed in a row.
    retry_at: Instant,
    retry_streak: u32,
    /// Something the operator should know (lost or regained Redis); taken by `notice`.
    news: Vec<String>,
    last_beat: Option<Instant>,
    handled: u64,
    /// Recipients per outcome, as the heartbeat shows them.
    counts: Vec<(String, u64)>,
    pace_text: String,
    /// Seconds left by the run's own estimate.
    eta: Option<u64>,
    /// The store's last refusal (addresses left out) and when.
    refusal: Option<(String, String)>,
    /// Why the run is paused, when it is (`control pause`), and whether the cluster is.
    paused: Option<String>,
    cluster_paused: bool,
    /// Claim keys of copies delivered and not yet confirmed, and since when the oldest.
    unconfirmed: Vec<String>,
    unconfirmed_since: Option<Instant>,
}

impl Member {
    /// Joins the cluster: checks Redis answers and says hello. Unreachable: an error, so
    /// the run stops before it delivers anything.
    pub fn join(
        url: &ClusterUrl,
        ledger: &std::path::Path,
        ceiling: Option<f64>,
        bytes_ceiling: Option<f64>,
        strict: bool,
    ) -> Result<Member, Unreachable> {
        let keys = Keys::new(url.name());
        let mut conn = connect(url).map_err(|e| unreachable(url, &e))?;
        let members: u64 = conn
            .zcount(&keys.members, "-inf", "+inf")
            .map_err(|e| unreachable(url, &e))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let ledger_name = ledger
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ledger.display().to_string());
        let id = format!("{host}:{}:{ledger_name}", std::process::id());
        let mut member = Member {
            url: url.clone(),
            keys,
            id,
            ledger: ledger.display().to_string(),
            conn: Some(conn),
            take: Script::new(TAKE),
            give_back: Script::new(GIVE_BACK),
            beat: Script::new(BEAT),
            claim: Script::new(CLAIM),
            owner: format!(
                "{host}:{}",
                std::fs::canonicalize(ledger)
                    .unwrap_or_else(|_| ledger.to_path_buf())
                    .display()
            ),
            strict,
            ceiling,
            bytes_ceiling,
            lease_left: 0,
            lease_bytes_left: 0,
            next_at: Instant::now(),
            spacing: Duration::ZERO,
            // Until a lease says otherwise, an even split of the budget is all it may take.
            share: ceiling.map(|c| c / (members + 1) as f64),
            recent: VecDeque::new(),
            seen_rate: None,
            follow: None,
            retry_at: Instant::now(),
            retry_streak: 0,
            news: Vec::new(),
            last_beat: None,
            handled: 0,
            counts: Vec::new(),
            pace_text: String::new(),
            eta: None,
            refusal: None,
            paused: None,
            cluster_paused: false,
            unconfirmed: Vec::new(),
            unconfirmed_since: None,
        };
        member
            .heartbeat("running", true)
            .map_err(|e| unreachable(url, &e))?;
        Ok(member)
    }

    /// This member's name in the cluster (host, process, ledger file).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This member's store connections: at most `limit` across the cluster (`--concurrency`).
    pub fn slots(&self, limit: usize) -> Slots {
        Slots::start(&self.url, self.keys.clone(), &self.id, limit)
    }

    fn lease_size(&self) -> u32 {
        match self.ceiling {
            Some(rate) => ((rate * LEASE_SPAN).round() as u32).clamp(1, LEASE_MAX),
            None => LEASE_MAX,
        }
    }

    fn lease_bytes(&self, bytes: u64) -> u64 {
        match self.bytes_ceiling {
            Some(bps) => bytes.max((bps * LEASE_SPAN) as u64),
            None => 0,
        }
    }

    /// Redis failed: go on alone at the last share, and try again later.
    fn lost(&mut self, e: &redis::RedisError) {
        if self.conn.take().is_some() {
            self.news.push(format!(
                "cluster coordinator {} lost ({e}); going on alone at {} at most",
                self.url,
                format_rate(self.share)
            ));
        }
        self.retry_streak += 1;
        let wait = Duration::from_secs(1 << self.retry_streak.min(5).saturating_sub(1));
        self.retry_at = Instant::now() + wait.min(RECONNECT_MAX);
    }

    /// A connection if there is one, reconnecting when the back-off allows.
    fn connection(&mut self) -> Option<&mut Connection> {
        if self.conn.is_none() && Instant::now() >= self.retry_at {
            match connect(&self.url) {
                Ok(c) => {
                    self.conn = Some(c);
                    self.retry_streak = 0;
                    self.news
                        .push(format!("cluster coordinator {} back; rejoined", self.url));
                }
                Err(e) => self.lost(&e),
            }
        }
        self.conn.as_mut()
    }

    /// Books a lease from the cluster; `None` when Redis cannot be used.
    fn lease(&mut self, bytes: u64) -> Option<Grant> {
        let turns = self.lease_size();
        let lease_bytes = self.lease_bytes(bytes);
        let (ceiling, bps) = (
            self.ceiling.unwrap_or(0.0),
            self.bytes_ceiling.unwrap_or(0.0),
        );
        let keys = self.keys.clone();
        let script = self.take.clone();
        let conn = self.connection()?;
        let answer: redis::RedisResult<(i64, i64, String, String)> = script
            .key(&keys.tokens)
            .key(&keys.pace)
            .key(&keys.paused)
            .arg(ceiling)
            .arg(turns)
            .arg(bps)
            .arg(lease_bytes)
            .invoke(conn);
        let (wait_us, rate_milli, reason, by) = match answer {
            Ok(a) => a,
            Err(e) => {
                self.lost(&e);
                return None;
            }
        };
        self.cluster_paused = wait_us < 0;
        if wait_us < 0 {
            // Still here, paused: the heartbeat goes on (or the member would look dead).
            if let Err(e) = self.heartbeat("running", false) {
                self.lost(&e);
            }
            return Some(Grant::Hold {
                wait: Duration::from_secs(1),
                why: "cluster paused by the operator".into(),
            });
        }
        let now = Instant::now();
        let wait = Duration::from_micros(wait_us as u64);
        self.lease_left = turns - 1;
        self.lease_bytes_left = lease_bytes.saturating_sub(bytes);
        self.spacing = if rate_milli > 0 {
            Duration::from_secs_f64(1000.0 / rate_milli as f64)
        } else {
            Duration::ZERO
        };
        self.next_at = now + wait + self.spacing;
        // What this member got over the last window: the most it may take if Redis goes.
        // Counted over the whole window even when the run is younger, so the estimate can
        // only be low, never high.
        let start = now + wait;
        self.recent.push_back((start, turns));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| start.duration_since(*at) > SHARE_WINDOW)
        {
            self.recent.pop_front();
        }
        let got: u32 = self.recent.iter().map(|(_, t)| t).sum();
        let got = f64::from(got) / SHARE_WINDOW.as_secs_f64();
        self.share = Some(self.ceiling.map_or(got, |c| got.min(c)));
        let shared = (rate_milli > 0 && !by.is_empty()).then_some(rate_milli);
        if shared != self.seen_rate {
            self.seen_rate = shared;
            if by != self.id && !by.is_empty() {
                self.follow = Some(PaceChange {
                    rate: Some(rate_milli as f64 / 1000.0),
                    reason: format!("cluster: {reason} (seen by {by})"),
                });
            }
        }
        Some(Grant::Go(wait))
    }

    /// Alone while Redis is away: spaced at the last share, never faster.
    fn alone(&mut self) -> Grant {
        let Some(share) = self.share else {
            return Grant::Go(Duration::ZERO);
        };
        let now = Instant::now();
        let start = self.next_at.max(now);
        self.next_at = start + Duration::from_secs_f64(1.0 / share.max(0.2));
        Grant::Go(start - now)
    }

    /// The `SET … EX` of every pending confirmation, added to `pipe`; the pending list is
    /// emptied (a confirmation that fails is not kept for later: see `confirm`).
    fn add_confirmations(&mut self, pipe: &mut redis::Pipeline) {
        let value = format!("delivered|{}", self.owner);
        for k in self.unconfirmed.drain(..) {
            pipe.set_ex(k, &value, DELIVERED_TTL).ignore();
        }
        self.unconfirmed_since = None;
    }

    /// Sends the pending confirmations now, in one round trip.
    fn flush_confirmations(&mut self) {
        if self.unconfirmed.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        self.add_confirmations(&mut pipe);
        let Some(conn) = self.connection() else {
            return;
        };
        if let Err(e) = pipe.query::<()>(conn) {
            self.lost(&e);
        }
    }

    fn heartbeat(&mut self, state: &str, force: bool) -> redis::RedisResult<()> {
        if !force && self.last_beat.is_some_and(|b| b.elapsed() < BEAT_EVERY) {
            return Ok(());
        }
        self.flush_confirmations();
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        self.last_beat = Some(Instant::now());
        let mut call = self.beat.prepare_invoke();
        call.key(self.keys.member(&self.id))
            .key(&self.keys.members)
            .arg(&self.id)
            .arg(MEMBER_TTL)
            .arg("ledger")
            .arg(&self.ledger)
            .arg("handled")
            .arg(self.handled)
            .arg("pace")
            .arg(&self.pace_text)
            .arg("state")
            .arg(match (&self.paused, self.cluster_paused, state) {
                (Some(_), _, "running") | (_, true, "running") => "paused",
                _ => state,
            })
            .arg("paused_by")
            .arg(match (&self.paused, self.cluster_paused) {
                (Some(by), _) => by.as_str(),
                (None, true) => "cluster pause",
                (None, false) => "",
            })
            .arg("eta")
            .arg(self.eta.map(|e| e.to_string()).unwrap_or_default());
        if let Some((text, at)) = &self.refusal {
            call.arg("refusal").arg(text).arg("refusal_at").arg(at);
        }
        for (k, v) in &self.counts {
            call.arg(format!("count:{k}")).arg(*v);
        }
        call.invoke::<i64>(conn).map(|_| ())
    }
}

impl TokenSource for Member {
    fn take(&mut self, bytes: u64) -> Grant {
        let fits = self.bytes_ceiling.is_none() || bytes <= self.lease_bytes_left;
        if self.conn.is_some() && self.lease_left > 0 && fits {
            self.lease_left -= 1;
            self.lease_bytes_left = self.lease_bytes_left.saturating_sub(bytes);
            let now = Instant::now();
            let at = self.next_at.max(now);
            self.next_at = at + self.spacing;
            return Grant::Go(at - now);
        }
        match self.lease(bytes) {
            Some(grant) => grant,
            None => self.alone(),
        }
    }

    fn publish(&mut self, change: &PaceChange) {
        {
            let keys = self.keys.clone();
            let id = self.id.clone();
            if let Some(conn) = self.connection() {
                let rate = change.rate.unwrap_or(0.0);
                let published: redis::RedisResult<()> = redis::pipe()
                    .atomic()
                    .hset_multiple(
                        &keys.pace,
                        &[
                            ("rate", rate.to_string()),
                            ("reason", change.reason.clone()),
                            ("member", id),
                        ],
                    )
                    .ignore()
                    .expire(&keys.pace, PACE_TTL as i64)
                    .ignore()
                    .query(conn);
                match published {
                    Ok(()) => self.seen_rate = Some((rate * 1000.0) as i64),
                    // Never queued for later: a stale back-off is worse than none.
                    Err(e) => self.lost(&e),
                }
            }
        }
    }

    fn follow(&mut self) -> Option<PaceChange> {
        self.follow.take()
    }

    fn news(&mut self) -> Vec<String> {
        std::mem::take(&mut self.news)
    }

    fn finish(&mut self) {
        self.flush_confirmations();
        let (ceiling, bps) = (
            self.ceiling.unwrap_or(0.0),
            self.bytes_ceiling.unwrap_or(0.0),
        );
        let (left, bytes_left) = (self.lease_left, self.lease_bytes_left);
        self.lease_left = 0;
        self.lease_bytes_left = 0;
        let keys = self.keys.clone();
        let script = self.give_back.clone();
        if let Some(conn) = self.conn.as_mut()
            && (left > 0 || bytes_left > 0)
        {
            let given: redis::RedisResult<i64> = script
                .key(&keys.tokens)
                .key(&keys.pace)
                .arg(ceiling)
                .arg(left)
                .arg(bps)
                .arg(bytes_left)
                .invoke(conn);
            if let Err(e) = given {
                self.lost(&e);
            }
        }
        if let Err(e) = self.heartbeat("finished", true) {
            self.lost(&e);
        }
    }

    fn claim(&mut self, key: &str, recipients: &[String]) -> Vec<Claim> {
        let away = if self.strict {
            Claim::Wait
        } else {
            Claim::Unchecked
        };
        let keys: Vec<String> = recipients.iter().map(|r| self.keys.claim(key, r)).collect();
        let (script, owner) = (self.claim.clone(), self.owner.clone());
        if self.connection().is_none() {
            return vec![away; recipients.len()];
        }
        let mut call = script.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(&owner).arg(CLAIM_TTL.as_millis() as u64);
        // The confirmations waiting go first, in the claim's round trip. A Redis that lost
        // the script (restarted, SCRIPT FLUSH) answers NOSCRIPT to the pipelined claim
        // only; the confirmations are done, and `invoke` loads the script and claims.
        let mut pipe = redis::pipe();
        self.add_confirmations(&mut pipe);
        pipe.invoke_script(&call);
        let Some(conn) = self.conn.as_mut() else {
            return vec![away; recipients.len()];
        };
        let claimed = match pipe.query::<(Vec<String>,)>(conn) {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => call.invoke(conn),
            other => other.map(|(found,)| found),
        };
        match claimed {
            Ok(found) if found.len() == recipients.len() => found
                .into_iter()
                .map(|v| match v.split_once('|') {
                    None => Claim::Mine,
                    Some((state, ledger)) => Claim::Theirs {
                        ledger: ledger.to_string(),
                        delivered: state == "delivered",
                    },
                })
                .collect(),
            Ok(_) => vec![away; recipients.len()],
            Err(e) => {
                self.lost(&e);
                vec![away; recipients.len()]
            }
        }
    }

    /// Queued for the next claim's round trip (`CONFIRM_WITHIN`, `CONFIRM_MAX`). Not
    /// confirmed (Redis lost): the claim expires and another ledger may deliver a second
    /// copy, which is what `--uncertain redeliver` accepts; never kept for a later
    /// connection.
    fn confirm(&mut self, key: &str, recipient: &str) {
        self.unconfirmed.push(self.keys.claim(key, recipient));
        let since = *self.unconfirmed_since.get_or_insert_with(Instant::now);
        if self.unconfirmed.len() >= CONFIRM_MAX || since.elapsed() >= CONFIRM_WITHIN {
            self.flush_confirmations();
        }
    }

    fn progress_due(&self) -> bool {
        self.conn.is_some() && self.last_beat.is_none_or(|b| b.elapsed() >= BEAT_EVERY)
    }

    fn outlook(&mut self, outlook: Outlook<'_>) {
        self.eta = outlook.eta.map(|e| e.as_secs());
        if let Some((text, at)) = outlook.refusal {
            self.refusal = Some((without_addresses(text), at.to_string()));
        }
        self.paused = outlook.paused.map(String::from);
    }

    fn progress(&mut self, handled: u64, counts: &[(&str, u64)], pace: &str) {
        self.handled = handled;
        self.counts = counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        pace.clone_into(&mut self.pace_text);
        if let Err(e) = self.heartbeat("running", false) {
            self.lost(&e);
        }
    }
}

/// A store's reply as the cluster may show it: every word with an `@` (an address, in
/// brackets or not) replaced by `<…>`, at most [`REFUSAL_MAX`] characters. Mailboxes
/// are not the cluster's business; the code and the words are what tell a store's state.
pub fn without_addresses(reply: &str) -> String {
    let mut out: String = reply
        .split(' ')
        .map(|w| if w.contains('@') { "<…>" } else { w })
        .collect::<Vec<_>>()
        .join(" ");
    if let Some((cut, _)) = out.char_indices().nth(REFUSAL_MAX) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The longest refusal a heartbeat carries (characters).
const REFUSAL_MAX: usize = 160;

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(reply: &str, expected: &str) {
        assert_eq!(without_addresses(reply), expected);
    }

    #[test]
    fn refusals_are_shown_without_their_addresses() {
        check(
            "550 5.1.1 <bob@example.test> User doesn't exist: bob@example.test",
            "550 5.1.1 <…> User doesn't exist: <…>",
        );
        check(
            "451 4.3.0 Temporary internal error",
            "451 4.3.0 Temporary internal error",
        );
        let long = format!("452 4.2.2 {}", "x".repeat(400));
        let shown = without_addresses(&long);
        assert_eq!(shown.chars().count(), REFUSAL_MAX + 1, "{shown}");
        assert!(shown.ends_with('…'));
    }
}
