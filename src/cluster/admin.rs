//! `cluster pause|resume|status`: an operator's connection to a cluster ([`Admin`]) and what
//! `status` reads from the members' heartbeats ([`ClusterStatus`], [`MemberStatus`]).

use redis::{Commands, Connection};

use super::{ClusterUrl, Keys, STALE_AFTER, Unreachable, connect, unreachable};

/// One member as `cluster status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub ledger: String,
    pub state: String,
    pub handled: u64,
    pub pace: String,
    /// Recipients per outcome (`delivered`, `deferred`, `failed`, `duplicate`, …).
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Seconds since its last heartbeat, by the server's clock.
    pub heartbeat_age: u64,
    pub stale: bool,
    /// Store connections it holds (cluster slots, `--concurrency`).
    pub connections: u64,
    /// Its own estimate of the time left (seconds), when it has one.
    pub eta_seconds: Option<u64>,
    /// Paused by what (`control pause` on its ledger, `cluster pause`), when paused.
    pub paused_by: Option<String>,
    /// The store's last refusal it saw (a 4xx or 5xx reply, addresses left out), and when.
    pub last_refusal: Option<String>,
    pub last_refusal_at: Option<String>,
}

/// The whole cluster as `cluster status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub paused: bool,
    /// The shared pace (messages/s) and why, if a member changed it.
    pub pace: Option<f64>,
    pub pace_reason: Option<String>,
    pub pace_member: Option<String>,
    pub members: Vec<MemberStatus>,
    pub handled: u64,
    /// Recipients per outcome over all members.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Store connections held across the cluster (slots live in Redis, a dead member's
    /// included until they expire).
    pub connections: u64,
    /// When the cluster should be done (seconds): the longest ETA of the members still
    /// working; `None` while one of them has no estimate yet.
    pub eta_seconds: Option<u64>,
}

/// An operator's connection to a cluster: `cluster pause|resume|status`.
pub struct Admin {
    url: ClusterUrl,
    keys: Keys,
    conn: Connection,
}

impl Admin {
    pub fn connect(url: &ClusterUrl) -> Result<Admin, Unreachable> {
        let conn = connect(url).map_err(|e| unreachable(url, &e))?;
        Ok(Admin {
            url: url.clone(),
            keys: Keys::new(url.name()),
            conn,
        })
    }

    fn failed(&self, e: &redis::RedisError) -> Unreachable {
        unreachable(&self.url, e)
    }

    /// Members hand nothing more to the store until `resume`.
    pub fn pause(&mut self) -> Result<(), Unreachable> {
        let r: redis::RedisResult<()> = self.conn.set(&self.keys.paused, 1);
        r.map_err(|e| self.failed(&e))
    }

    pub fn resume(&mut self) -> Result<(), Unreachable> {
        let r: redis::RedisResult<()> = self.conn.del(&self.keys.paused);
        r.map_err(|e| self.failed(&e))
    }

    pub fn status(&mut self) -> Result<ClusterStatus, Unreachable> {
        self.read_status().map_err(|e| self.failed(&e))
    }

    fn read_status(&mut self) -> redis::RedisResult<ClusterStatus> {
        let (now, micros): (u64, u64) = redis::cmd("TIME").query(&mut self.conn)?;
        let now_ms = now * 1000 + micros / 1000;
        // Live slots per member: a token is `MEMBER#N`.
        let slots: Vec<String> =
            self.conn
                .zrangebyscore(&self.keys.slots, format!("({now_ms}"), "+inf")?;
        let mut held: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for token in &slots {
            let member = token.rsplit_once('#').map_or(token.as_str(), |(m, _)| m);
            *held.entry(member).or_insert(0) += 1;
        }
        let paused: bool = self.conn.exists(&self.keys.paused)?;
        let (rate, reason, by): (Option<f64>, Option<String>, Option<String>) = self
            .conn
            .hget(&self.keys.pace, &["rate", "reason", "member"])?;
        let ids: Vec<String> = self.conn.zrange(&self.keys.members, 0, -1)?;
        let mut members = Vec::with_capacity(ids.len());
        for id in ids {
            let fields: std::collections::HashMap<String, String> =
                self.conn.hgetall(self.keys.member(&id))?;
            if fields.is_empty() {
                continue; // expired long ago
            }
            let at: u64 = fields.get("at").and_then(|a| a.parse().ok()).unwrap_or(0);
            let state = fields.get("state").cloned().unwrap_or_default();
            let age = now.saturating_sub(at);
            members.push(MemberStatus {
                stale: state != "finished" && age > STALE_AFTER.as_secs(),
                ledger: fields.get("ledger").cloned().unwrap_or_default(),
                handled: fields
                    .get("handled")
                    .and_then(|h| h.parse().ok())
                    .unwrap_or(0),
                pace: fields.get("pace").cloned().unwrap_or_default(),
                counts: fields
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.strip_prefix("count:")?.to_string(), v.parse().ok()?))
                    })
                    .collect(),
                heartbeat_age: age,
                connections: held.get(id.as_str()).copied().unwrap_or(0),
                eta_seconds: fields.get("eta").and_then(|e| e.parse().ok()),
                paused_by: fields.get("paused_by").filter(|p| !p.is_empty()).cloned(),
                last_refusal: fields.get("refusal").filter(|r| !r.is_empty()).cloned(),
                last_refusal_at: fields.get("refusal_at").filter(|r| !r.is_empty()).cloned(),
                state,
                id,
            });
        }
        let mut counts = std::collections::BTreeMap::new();
        for m in &members {
            for (k, v) in &m.counts {
                *counts.entry(k.clone()).or_insert(0) += v;
            }
        }
        // The members work side by side: the cluster is done when the slowest is.
        let working: Vec<&MemberStatus> = members
            .iter()
            .filter(|m| m.state != "finished" && !m.stale)
            .collect();
        let eta_seconds = if working.iter().all(|m| m.eta_seconds.is_some()) {
            Some(
                working
                    .iter()
                    .filter_map(|m| m.eta_seconds)
                    .max()
                    .unwrap_or(0),
            )
        } else {
            None
        };
        Ok(ClusterStatus {
            connections: slots.len() as u64,
            eta_seconds,
            counts,
            cluster: self.url.to_string(),
            paused,
            pace: rate.filter(|r| *r > 0.0),
            pace_reason: reason,
            pace_member: by,
            handled: members.iter().map(|m| m.handled).sum(),
            members,
        })
    }
}
