//! Cluster-wide store connections (`--concurrency` with `--cluster`): one slot per open
//! store connection, kept in Redis as a lease that expires unless renewed.
//!
//! A worker takes a slot before it opens a store connection and gives it back when the
//! connection closes (its `Slotted` store is dropped), so the members of one cluster never
//! hold more connections than `--concurrency` between them. Slots are entries of a sorted
//! set scored by their expiry (Redis `TIME`), renewed every second by a thread of the
//! member; a member killed with kill -9 stops renewing and its slots free themselves after
//! [`SLOT_TTL`]. Members waiting for a slot queue in arrival order; a member holding slots
//! while others wait gives each up after [`SLOT_HOLD`] (or [`SLOT_IDLE`] without work),
//! closing that connection, and queues again behind them, so the slots go round.
//!
//! Without Redis a member keeps the slots it holds (never more: like its pace share) and
//! takes no new one; when Redis answers again, a slot it no longer knows (a restarted,
//! empty Redis) is given up after the transaction in progress and taken again in turn.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::{Connection, Script};

use super::{ClusterUrl, Keys, connect};
use crate::deliver::{Deliverer, Delivery, Outcome, RecipientSpec, StoreError};

/// A slot not renewed for this long is free again (a member that died holding it).
pub const SLOT_TTL: Duration = Duration::from_secs(5);
/// How often a member renews the slots it holds (well within [`SLOT_TTL`]).
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// With others waiting, a slot is given up after being held this long...
const SLOT_HOLD: Duration = Duration::from_secs(2);
/// ... or after its connection was idle this long.
const SLOT_IDLE: Duration = Duration::from_millis(500);
/// How often a worker waiting for a slot asks again.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// A waiter that has not asked for this long is no longer in the queue (ms).
const WAITER_GONE_MS: u64 = 2000;

/// Takes a slot if one is free and nobody waiting came first. KEYS: slots (token → expiry
/// in ms), waiters (token → first ask), seen (token → last ask). ARGV: token, the limit,
/// the slot's TTL (ms), how long a silent waiter stays queued (ms). Returns 1 when taken.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]))) do
  redis.call('ZREM', KEYS[2], w)
  redis.call('ZREM', KEYS[3], w)
end
local ttl = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  return 1
end
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free > 0 then
  local ahead = redis.call('ZRANK', KEYS[2], ARGV[1])
  if not ahead then ahead = redis.call('ZCARD', KEYS[2]) end
  if ahead < free then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[3], ARGV[1])
    return 1
  end
end
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[1])
return 0
"#;

/// Renews slots still held. KEYS: slots, waiters, seen. ARGV: the TTL (ms), how long a
/// silent waiter stays queued (ms), then the tokens. Returns {waiters, then per token 1
/// (renewed) or 0 (gone: expired or forgotten)}.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[2], w)
  redis.call('ZREM', KEYS[3], w)
end
local out = {redis.call('ZCARD', KEYS[2])}
for i = 3, #ARGV do
  local at = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0')
  if at > now then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
    out[#out + 1] = 1
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
    out[#out + 1] = 0
  end
end
return out
"#;

/// One slot this member holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    since: Instant,
    /// Redis no longer has it: give it up after the transaction in progress.
    lost: bool,
}

struct Shared {
    url: ClusterUrl,
    keys: Keys,
    member: String,
    limit: usize,
    conn: Mutex<Link>,
    held: Mutex<HashMap<u64, Held>>,
    /// Someone (of any member) waits for a slot: holders take turns.
    others_wait: AtomicBool,
    next: AtomicU64,
    acquire: Script,
    renew: Script,
}

/// The slots' own Redis connection (the member's is the dispatcher's), reconnected with
/// back-off.
struct Link {
    conn: Option<Connection>,
    retry_at: Instant,
    streak: u32,
}

impl Shared {
    fn token(&self, n: u64) -> String {
        format!("{}#{n}", self.member)
    }

    /// Runs `f` on the connection, connecting first if the back-off allows. A failure
    /// drops the connection; nothing is queued for later.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let mut link = self
            .conn
            .lock()
            .map_err(|_| "slot lock poisoned".to_string())?;
        if link.conn.is_none() {
            if Instant::now() < link.retry_at {
                return Err("the cluster coordinator is unreachable".into());
            }
            match connect(&self.url) {
                Ok(c) => {
                    link.conn = Some(c);
                    link.streak = 0;
                }
                Err(e) => {
                    link.streak += 1;
                    let wait = Duration::from_secs(1 << link.streak.min(5).saturating_sub(1));
                    link.retry_at = Instant::now() + wait;
                    return Err(e.to_string());
                }
            }
        }
        let Some(conn) = link.conn.as_mut() else {
            return Err("the cluster coordinator is unreachable".into());
        };
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                link.conn = None;
                link.retry_at = Instant::now() + Duration::from_secs(1);
                Err(e.to_string())
            }
        }
    }

    fn release(&self, n: u64) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&n);
        }
        let token = self.token(n);
        // Not given back (Redis away): it expires after SLOT_TTL.
        let _ = self.with_conn(|c| {
            redis::pipe()
                .zrem(&self.keys.slots, &token)
                .ignore()
                .zrem(&self.keys.waiters, &token)
                .ignore()
                .query::<()>(c)
        });
    }

    /// One renewal of every slot held; false when the coordinator could not be asked.
    fn renew_all(&self) -> bool {
        let held: Vec<u64> = match self.held.lock() {
            Ok(h) => h.keys().copied().collect(),
            Err(_) => return false,
        };
        if held.is_empty() {
            return true;
        }
        let mut call = self.renew.prepare_invoke();
        call.key(&self.keys.slots)
            .key(&self.keys.waiters)
            .key(&self.keys.seen)
            .arg(SLOT_TTL.as_millis() as u64)
            .arg(WAITER_GONE_MS);
        for n in &held {
            call.arg(self.token(*n));
        }
        let Ok(answer) = self.with_conn(|c| call.invoke::<Vec<i64>>(c)) else {
            // Kept while Redis is away: never more than the member held.
            return false;
        };
        let Some((&waiting, flags)) = answer.split_first() else {
            return false;
        };
        self.others_wait.store(waiting > 0, Ordering::Relaxed);
        if let Ok(mut h) = self.held.lock() {
            for (n, flag) in held.iter().zip(flags) {
                if *flag == 0
                    && let Some(slot) = h.get_mut(n)
                {
                    slot.lost = true;
                }
            }
        }
        true
    }
}

/// A member's share of the cluster's store connections; cloned into the store factory.
#[derive(Clone)]
pub struct Slots {
    shared: Arc<Shared>,
}

impl Slots {
    /// Slots for the member `member` of the cluster at `url`, at most `limit` across the
    /// cluster; starts the renewing thread, which ends when the last handle is dropped.
    pub(super) fn start(url: &ClusterUrl, keys: Keys, member: &str, limit: usize) -> Slots {
        let shared = Arc::new(Shared {
            url: url.clone(),
            keys,
            member: member.to_string(),
            limit: limit.max(1),
            conn: Mutex::new(Link {
                conn: None,
                retry_at: Instant::now(),
                streak: 0,
            }),
            held: Mutex::new(HashMap::new()),
            others_wait: AtomicBool::new(false),
            next: AtomicU64::new(1),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("cluster-slots".into())
            .spawn(move || renew_loop(&weak))
            .ok();
        Slots { shared }
    }

    /// Waits for a slot. Fails (as an unavailable store: the run backs off and exits 75
    /// after `--store-timeout`) when the coordinator cannot be asked: without it, a member
    /// takes no slot it did not hold.
    pub fn acquire(&self) -> Result<Lease, StoreError> {
        let s = &self.shared;
        let n = s.next.fetch_add(1, Ordering::Relaxed);
        let token = s.token(n);
        loop {
            let taken = s.with_conn(|c| {
                s.acquire
                    .key(&s.keys.slots)
                    .key(&s.keys.waiters)
                    .key(&s.keys.seen)
                    .arg(&token)
                    .arg(s.limit)
                    .arg(SLOT_TTL.as_millis() as u64)
                    .arg(WAITER_GONE_MS)
                    .invoke::<i64>(c)
            });
            match taken {
                Ok(1) => {
                    if let Ok(mut held) = s.held.lock() {
                        held.insert(
                            n,
                            Held {
                                since: Instant::now(),
                                lost: false,
                            },
                        );
                    }
                    return Ok(Lease {
                        shared: Arc::clone(s),
                        n,
                    });
                }
                Ok(_) => std::thread::sleep(POLL_EVERY),
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "no store connection can be taken while the cluster coordinator {} is unreachable ({e})",
                        s.url
                    )));
                }
            }
        }
    }

    /// Wraps `factory` so that each store it makes holds a slot for as long as it lives.
    pub fn around(
        self,
        factory: Box<crate::replay::StoreFactory<'static>>,
    ) -> Box<crate::replay::StoreFactory<'static>> {
        Box::new(move || {
            let lease = self.acquire()?;
            let store = factory()?;
            Ok(Box::new(Slotted { store, lease }) as Box<dyn Deliverer>)
        })
    }
}

fn renew_loop(shared: &Weak<Shared>) {
    let mut last = Instant::now();
    loop {
        std::thread::sleep(POLL_EVERY);
        let Some(s) = shared.upgrade() else { return };
        if last.elapsed() >= RENEW_EVERY {
            last = Instant::now();
            s.renew_all();
        }
    }
}

/// One slot held; given back when dropped.
pub struct Lease {
    shared: Arc<Shared>,
    n: u64,
}

impl Lease {
    /// Whether the connection this slot covers should close now: the slot is gone from
    /// Redis, or others wait and this one was held long enough or is idle.
    pub fn give_up(&self, idle: Duration) -> bool {
        let Some(held) = self
            .shared
            .held
            .lock()
            .ok()
            .and_then(|h| h.get(&self.n).copied())
        else {
            return true;
        };
        held.lost
            || (self.shared.others_wait.load(Ordering::Relaxed)
                && (idle >= SLOT_IDLE || held.since.elapsed() >= SLOT_HOLD))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.release(self.n);
    }
}

/// A store connection that holds a cluster slot. The store is dropped (its connection
/// closed) before the slot goes back: fields drop in order.
struct Slotted {
    store: Box<dyn Deliverer>,
    lease: Lease,
}

impl Deliverer for Slotted {
    fn describe(&self) -> String {
        self.store.describe()
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        self.store.probe()
    }

    fn verifiable(&self) -> bool {
        self.store.verifiable()
    }

    fn deliver(
        &mut self,
        delivery: &Delivery<'_>,
        recipients: &[RecipientSpec<'_>],
    ) -> Result<Vec<Outcome>, StoreError> {
        self.store.deliver(delivery, recipients)
    }

    fn give_up(&self, idle: Duration) -> bool {
        self.lease.give_up(idle)
    }
}
