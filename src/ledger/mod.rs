//! The SQLite ledger: every message, every recipient's state, every state change, the
//! quarantine and the DSNs. The only module that uses rusqlite.
//!
//! One writer at a time: `Ledger::open_for_write` takes an exclusive lock on
//! `<ledger>.lock` (holding the owner's pid and command, so a second process can name it).
//! Readers (`report`, `status`, `bounces`) open without the lock; WAL lets them read while
//! a run writes.

pub mod combined;
mod dsns;
mod lock;
mod meta;
pub mod queries;
mod schema;
pub mod state;
mod steering;

pub use steering::Steer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, params};

use crate::address::ReversePath;
use crate::exit::{Exit, Failure, failure};
use crate::spool::{ContentHash, Prior, Quarantined, QueuedMessage, SourceRef, SpoolFormat};
pub use dsns::{DsnFilter, DsnKind, DsnRow, SendState};
pub use meta::describe as describe_shard;
pub use state::RcptState;

pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    _lock: Option<lock::LedgerLock>,
}

/// A message as the ledger knows it.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: i64,
    pub content_hash: String,
    pub source: SourceRef,
    pub queue_id: String,
    pub size: u64,
    pub sender: ReversePath,
    pub arrival: DateTime<FixedOffset>,
    pub envid: Option<String>,
    pub ret: Option<String>,
    pub window: Option<String>,
    pub disposition: Option<String>,
    pub queue_name: Option<String>,
    pub mta_hold: bool,
}

/// One recipient of one message.
#[derive(Debug, Clone)]
pub struct RecipientRow {
    pub id: i64,
    pub message_id: i64,
    pub address: String,
    pub domain: String,
    pub orcpt: Option<String>,
    pub notify: Option<String>,
    pub state: RcptState,
    pub status: Option<String>,
    pub reply: Option<String>,
    pub attempts: i64,
    pub last_attempt: Option<String>,
    /// When a deferred recipient may be tried again (unix seconds).
    pub next_attempt: Option<i64>,
    /// The server that gave the last reply, when a remote server answered.
    pub remote: Option<String>,
    /// The delay warning this recipient got, if any.
    pub delay_dsn_id: Option<i64>,
}

/// The order `run` delivers in (`--order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryOrder {
    /// Oldest first: the order the spool was ingested in.
    #[default]
    Arrival,
    /// Newest arrival first: the mail people are waiting for now.
    Newest,
    /// Round-robin across mailboxes, so one mailbox with 50,000 messages does not hold
    /// back everyone else's first message.
    Fair,
}

impl std::str::FromStr for DeliveryOrder {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "arrival" => Ok(DeliveryOrder::Arrival),
            "newest" => Ok(DeliveryOrder::Newest),
            "fair" => Ok(DeliveryOrder::Fair),
            other => Err(format!("`{other}` is not `arrival`, `newest` or `fair`")),
        }
    }
}

/// A message with the recipients selected alongside it.
#[derive(Debug, Clone)]
pub struct MessageWork {
    pub message: MessageRow,
    pub recipients: Vec<RecipientRow>,
}

#[derive(Debug, Clone)]
pub struct QuarantineRow {
    pub source_format: String,
    pub source_path: String,
    pub source_offset: i64,
    pub reason: String,
    pub first_seen: String,
}

/// What `insert_message` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The same content from the same source is already in the ledger.
    Known,
}

const CORRUPT_HINT: &str = "restore it from a backup, or pass --ledger NEW_PATH and ingest again";

/// Damage met in the middle of a command (a page no earlier check read) is bad data, not
/// I/O trouble: give it exit 65 and the same words as damage found at open.
pub fn explain_corruption(err: anyhow::Error) -> anyhow::Error {
    let corrupt = err.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            )
        })
    });
    let typed = err
        .downcast_ref::<Failure>()
        .is_some_and(|f| f.exit == Exit::DataErr);
    if !corrupt || typed {
        return err;
    }
    err.context(Failure::new(Exit::DataErr, "the ledger is corrupted").with_hint(CORRUPT_HINT))
}

/// The ledger's clock for the audit trail: real time, never the `--now` of a what-if.
pub fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The writer's page cache, as `PRAGMA cache_size` takes it (negative: KiB): 32 MB.
const WRITER_CACHE_KIB: i64 = -32768;

/// How the reply of a recipient held because its spool file changed or vanished since
/// ingest begins: `run` writes it, `status` counts by it.
pub const SPOOL_CHANGED: &str = "the spool changed since ingest";

/// The error of a command that needs a ledger where there is none.
fn no_ledger(path: &Path) -> anyhow::Error {
    anyhow::Error::new(
        Failure::new(Exit::NoInput, format!("no ledger at `{}`", path.display()))
            .with_hint("run `spoolreplay ingest SPOOL` first, or pass --ledger PATH"),
    )
}

impl Ledger {
    /// Opens an existing ledger for a command that writes (`run`, `bounces write|send`);
    /// only `ingest` creates one, so a typo in `--ledger` is refused (exit 66) and leaves
    /// no empty ledger or lock file behind.
    pub fn open_existing_for_write(path: &Path, command: &str) -> Result<Ledger> {
        if !path.exists() {
            return Err(no_ledger(path));
        }
        Ledger::open_for_write(path, command)
    }

    /// Opens (creating if needed) for a command that writes; takes the writer lock.
    pub fn open_for_write(path: &Path, command: &str) -> Result<Ledger> {
        let lock = lock::LedgerLock::acquire(path, command)?;
        let conn = Connection::open(path).map_err(|e| {
            anyhow::Error::new(e).context(Failure::new(
                Exit::CantCreate,
                format!("cannot open ledger `{}`", path.display()),
            ))
        })?;
        let mut ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            _lock: Some(lock),
        };
        ledger.configure()?;
        ledger.check_integrity()?;
        ledger.migrate()?;
        ledger.ensure_lookup_indexes()?;
        Ok(ledger)
    }

    /// No command may build on, or report from, a damaged file: SQLite notices damage only
    /// on the pages a query happens to read, so check them all (`quick_check`: every page
    /// and index entry read once, a second or two per million messages).
    fn check_integrity(&self) -> Result<()> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| self.corrupt_or(e, "cannot check ledger"))?;
        if verdict == "ok" {
            return Ok(());
        }
        Err(anyhow::Error::new(
            Failure::new(
                Exit::DataErr,
                format!("ledger `{}` is corrupted: {verdict}", self.path.display()),
            )
            .with_hint(CORRUPT_HINT),
        ))
    }

    /// Opens an existing ledger to read it; no lock, no migration. Checked for damage like
    /// a writer's open: a reader that only met the pages its queries touch would print
    /// plausible counts from a damaged file (`status` did, exit 0).
    pub fn open_read(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(no_ledger(path));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open ledger `{}`", path.display()))?;
        let ledger = Ledger {
            conn,
            path: path.to_path_buf(),
            _lock: None,
        };
        ledger.set_busy_timeout()?;
        let version = ledger.user_version()?;
        if version != schema::latest_version() {
            return Err(failure(
                Exit::DataErr,
                format!(
                    "ledger `{}` has schema version {version}, this spoolreplay reads version {}",
                    path.display(),
                    schema::latest_version()
                ),
            ));
        }
        ledger.check_integrity()?;
        Ok(ledger)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn set_busy_timeout(&self) -> Result<()> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .with_context(|| format!("cannot configure ledger `{}`", self.path.display()))
    }

    fn configure(&self) -> Result<()> {
        self.set_busy_timeout()?;
        // WAL: readers (report, status) work while a run writes; synchronous=FULL so a
        // committed checkpoint survives a power cut, not just a process crash. A 32 MB page
        // cache (SQLite's default is 2 MB) keeps the hash-keyed indexes of a big ledger in
        // memory: with 2 MB, ingest slows down as the ledger grows (measured: 2.2x at 100k).
        self.conn
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                     PRAGMA cache_size = {WRITER_CACHE_KIB};"
            ))
            .map_err(|e| self.corrupt_or(e, "cannot configure ledger"))
    }

    /// For a bulk writer (ingest): let the WAL grow to about 80 MB before it is copied back
    /// into the database, instead of SQLite's 4 MB. Ingest touches pages of random-key
    /// indexes all over the file; checkpointing every 4 MB wrote the same pages again and
    /// again (300k messages: 42 s, 28.9 s with this). Readers are not affected, and the WAL
    /// is checkpointed and removed when the writer closes.
    pub fn checkpoint_in_large_steps(&self) -> Result<()> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 20_000)
            .with_context(|| format!("cannot configure ledger `{}`", self.path.display()))
    }

    /// SQLite says "file is not a database" for a corrupted or foreign file: say that.
    fn corrupt_or(&self, e: rusqlite::Error, what: &str) -> anyhow::Error {
        let corrupt = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
        );
        let msg = format!("{what} `{}`", self.path.display());
        if corrupt {
            anyhow::Error::new(e).context(
                Failure::new(
                    Exit::DataErr,
                    format!("{msg}: it is corrupted or not a ledger"),
                )
                .with_hint(CORRUPT_HINT),
            )
        } else {
            anyhow::Error::new(e).context(msg)
        }
    }

    fn user_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.corrupt_or(e, "cannot read ledger"))
    }

    fn migrate(&mut self) -> Result<()> {
        let version = self.user_version()?;
        let latest = schema::latest_version();
        if version > latest {
            return Err(failure(
                Exit::DataErr,
                format!(
                    "ledger `{}` has schema version {version}, newer than this spoolreplay knows ({latest})",
                    self.path.display()
                ),
            ));
        }
        for (index, step) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
            let next = index as i64 + 1;
            let tx = self.conn.transaction()?;
            tx.execute_batch(step)
                .with_context(|| format!("cannot migrate ledger to version {next}"))?;
            tx.pragma_update(None, "user_version", next)?;
            tx.commit()
                .with_context(|| format!("cannot migrate ledger to version {next}"))?;
        }
        Ok(())
    }

    /// A bulk ingest into an empty ledger drops the look-up indexes (`LOOKUP_INDEXES`)
    /// and builds them once at the end (`ensure_lookup_indexes`), instead of updating
    /// them per message: their keys are random, and at 1M messages keeping them up to
    /// date was ~30% of ingest. Returns whether it did. A ledger left without them by a
    /// crash gets them back from the next writer that opens it.
    pub fn defer_lookup_indexes(&mut self) -> Result<bool> {
        let empty: bool = self
            .conn
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM messages)", [], |r| {
                r.get(0)
            })
            .with_context(|| format!("cannot read ledger `{}`", self.path.display()))?;
        if !empty {
            return Ok(false);
        }
        for (name, _) in schema::LOOKUP_INDEXES {
            self.conn
                .execute_batch(&format!("DROP INDEX IF EXISTS {name}"))
                .with_context(|| format!("cannot prepare ledger `{}`", self.path.display()))?;
        }
        Ok(true)
    }

    /// Creates the look-up indexes a bulk ingest left out (a no-op when they exist).
    /// SQLite sorts for `CREATE INDEX` in memory up to the page cache size, on top of the
    /// cache itself: an 8 MB cache while indexing keeps a 1M-message ingest's peak at
    /// ~60 MB instead of ~90 MB (the sort spills to a temporary file instead).
    pub fn ensure_lookup_indexes(&self) -> Result<()> {
        let context = || format!("cannot index ledger `{}`", self.path.display());
        self.conn
            .pragma_update(None, "cache_size", -8192)
            .with_context(context)?;
        for (_, create) in schema::LOOKUP_INDEXES {
            self.conn
                .execute_batch(&create.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))
                .with_context(context)?;
        }
        self.conn
            .pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .with_context(context)
    }

    /// Runs `f` in one transaction; committed only if `f` succeeds.
    pub fn write<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .with_context(|| format!("cannot start a transaction on `{}`", self.path.display()))?;
        let value = f(&Tx { tx: &tx })?;
        tx.commit()
            .with_context(|| format!("cannot commit to ledger `{}`", self.path.display()))?;
        Ok(value)
    }

    /// Messages with at least one recipient in `states`, with those recipients, in id order
    /// after `after_id`; at most `limit` messages. Callers page through with the last id,
    /// so memory stays bounded however large the ledger.
    pub fn messages_in_states(
        &self,
        states: &[RcptState],
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<MessageWork>> {
        // One index range scan per state on recipients(state, message_id), merged here:
        // cheap however large the ledger, unlike a scan of messages with EXISTS.
        let mut ids: Vec<i64> = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT message_id FROM recipients WHERE state = ?1 AND message_id > ?2 \
             ORDER BY message_id LIMIT ?3",
        )?;
        for state in states {
            let found = stmt
                .query_map(params![state.as_str(), after_id, limit as i64], |r| {
                    r.get::<_, i64>(0)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            ids.extend(found);
        }
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);

        let placeholders = states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let rsql = format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ?1 AND state IN ({placeholders}) ORDER BY id"
        );
        let mut rstmt = self.conn.prepare_cached(&rsql)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let message = self.message(id)?;
            let recipients = rstmt
                .query_map(params![id], recipient_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            out.push(MessageWork {
                message,
                recipients,
            });
        }
        Ok(out)
    }

    /// Like [`Ledger::deliverable`], in `order`. `Arrival` pages by id after `after_id`;
    /// the others take the first `limit` of what is deliverable now (what was handed over
    /// is in flight or settled by the next call, so no cursor is needed), at the cost of
    /// one pass over the open recipients per batch.
    pub fn deliverable_in(
        &self,
        order: DeliveryOrder,
        after_id: i64,
        limit: usize,
        now_unix: i64,
    ) -> Result<Vec<MessageWork>> {
        const DUE: &str =
            "(r.state = 'pending' OR (r.state = 'deferred' AND coalesce(r.next_attempt, 0) <= ?1))";
        let sql = match order {
            DeliveryOrder::Arrival => return self.deliverable(after_id, limit, now_unix),
            DeliveryOrder::Newest => format!(
                "SELECT m.id FROM messages m WHERE EXISTS (SELECT 1 FROM recipients r \
                 WHERE r.message_id = m.id AND {DUE}) ORDER BY m.arrival_unix DESC, m.id DESC LIMIT ?2"
            ),
            // Round-robin across mailboxes: every mailbox's first message, then every
            // mailbox's second, … (a message to several counts at its best turn).
            DeliveryOrder::Fair => format!(
                "SELECT message_id FROM (SELECT r.message_id, row_number() OVER \
                 (PARTITION BY lower(r.address) ORDER BY r.message_id) AS turn \
                 FROM recipients r WHERE {DUE}) GROUP BY message_id \
                 ORDER BY min(turn), message_id LIMIT ?2"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let ids = stmt
            .query_map(params![now_unix, limit as i64], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        self.work_of(ids, now_unix)
    }

    /// Messages with recipients to deliver now: pending, or deferred and due at `now_unix`;
    /// in id order after `after_id`, at most `limit`.
    pub fn deliverable(
        &self,
        after_id: i64,
        limit: usize,
        now_unix: i64,
    ) -> Result<Vec<MessageWork>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT message_id FROM recipients WHERE state = 'pending' AND message_id > ?1 \
             ORDER BY message_id LIMIT ?2",
        )?;
        let mut ids = stmt
            .query_map(params![after_id, limit as i64], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT message_id FROM recipients WHERE state = 'deferred' AND message_id > ?1 \
             AND coalesce(next_attempt, 0) <= ?3 ORDER BY message_id LIMIT ?2",
        )?;
        ids.extend(
            stmt.query_map(params![after_id, limit as i64, now_unix], |r| {
                r.get::<_, i64>(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?,
        );
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit);
        self.work_of(ids, now_unix)
    }

    /// The messages `ids`, in that order, with their recipients due at `now_unix`.
    fn work_of(&self, ids: Vec<i64>, now_unix: i64) -> Result<Vec<MessageWork>> {
        let mut rstmt = self.conn.prepare_cached(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ?1 AND \
             (state = 'pending' OR (state = 'deferred' AND coalesce(next_attempt, 0) <= ?2)) ORDER BY id"
        ))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let message = self.message(id)?;
            let recipients = rstmt
                .query_map(params![id, now_unix], recipient_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            out.push(MessageWork {
                message,
                recipients,
            });
        }
        Ok(out)
    }

    /// The earliest time a deferred recipient is due again (unix seconds).
    pub fn next_retry_at(&self) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT min(coalesce(next_attempt, 0)) FROM recipients WHERE state = 'deferred'",
            [],
            |r| r.get(0),
        )?)
    }

    /// The messages with this queue id (one per spool it was ingested from).
    pub fn messages_by_queue_id(&self, queue_id: &str) -> Result<Vec<MessageRow>> {
        let sql =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.queue_id = ?1 ORDER BY m.id");
        let rows = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params![queue_id], message_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    /// One message by id.
    pub fn message(&self, id: i64) -> Result<MessageRow> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?1");
        self.conn
            .prepare_cached(&sql)?
            .query_row(params![id], message_from_row)
            .with_context(|| format!("message {id} is missing from the ledger"))?
    }

    /// All recipients of one message (any state).
    pub fn recipients_of(&self, message_id: i64) -> Result<Vec<RecipientRow>> {
        let sql =
            format!("SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ?1 ORDER BY id");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(params![message_id], recipient_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    /// Calls `f` for every message (with all its recipients) in id order, streaming.
    pub fn for_each_message(
        &self,
        mut f: impl FnMut(&MessageRow, &[RecipientRow]) -> Result<()>,
    ) -> Result<()> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id > ?1 ORDER BY m.id LIMIT 500"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut after = 0;
        loop {
            let page = stmt
                .query_map(params![after], message_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if page.is_empty() {
                return Ok(());
            }
            for message in page {
                let message = message?;
                after = message.id;
                let recipients = self.recipients_of(message.id)?;
                f(&message, &recipients)?;
            }
        }
    }

    /// Recipients per state.
    pub fn state_counts(&self) -> Result<Vec<(RcptState, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, count(*) FROM recipients GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (state, n) = row?;
            out.push((parse_state(&state)?, n as u64));
        }
        out.sort();
        Ok(out)
    }

    /// Recipients per (window of the last classification, state).
    pub fn state_counts_by_window(&self) -> Result<Vec<(Option<String>, RcptState, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            // A message `run` never classifies (all its recipients settled at ingest, such
            // as exact duplicates) is counted in the window of the first classified copy
            // of the same content: the window it really arrived in.
            "SELECT coalesce(m.window, (SELECT o.window FROM messages o \
                 WHERE o.content_hash = m.content_hash AND o.window IS NOT NULL ORDER BY o.id LIMIT 1)) AS w, \
             r.state, count(*) FROM recipients r JOIN messages m ON m.id = r.message_id \
             GROUP BY w, r.state ORDER BY w, r.state",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (window, state, n) = row?;
            out.push((window, parse_state(&state)?, n as u64));
        }
        Ok(out)
    }

    pub fn message_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Quarantined items not since ingested fine, oldest first, at most `limit`.
    pub fn quarantined(&self, limit: usize) -> Result<(u64, Vec<QuarantineRow>)> {
        let total: i64 = self.conn.query_row(
            "SELECT count(*) FROM quarantine WHERE resolved_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT source_format, source_path, source_offset, reason, first_seen FROM quarantine \
             WHERE resolved_at IS NULL ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(QuarantineRow {
                    source_format: r.get(0)?,
                    source_path: r.get(1)?,
                    source_offset: r.get(2)?,
                    reason: r.get(3)?,
                    first_seen: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((total as u64, rows))
    }
}

/// A write transaction. Every state change goes through `set_state`, which checks the
/// transition and appends to the audit trail.
pub struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
}

/// What a state change also records.
#[derive(Debug, Default, Clone, Copy)]
pub struct Change<'a> {
    /// Free text for the audit trail, and the recipient's `reply` (the store's answer or
    /// our reason) unless `audit_only`.
    pub detail: Option<&'a str>,
    /// The detail is bookkeeping ("delivering to …", "dsn 3"): keep the recipient's last
    /// reply, which a DSN or an operator still needs.
    pub audit_only: bool,
    /// An RFC 3463 status (for failures).
    pub status: Option<&'a str>,
    /// The time of a real delivery attempt.
    pub attempted_at: Option<&'a str>,
    /// When to try a deferred recipient again (unix seconds).
    pub next_attempt: Option<i64>,
    /// The server that gave the reply in `detail`.
    pub remote: Option<&'a str>,
}

/// Where a mailbox was already met while inserting a message.
enum SeenAt {
    /// In an earlier message with the same content (its queue id).
    Earlier(String),
    /// Earlier in this message's own envelope (that recipient's address as given).
    Sibling(String),
}

impl Tx<'_> {
    /// Adds a message and its recipients (state pending), unless the same content from the
    /// same source is already there. Clears a quarantine entry for that source.
    /// `hash` is `msg.identify(rule)`, taken by the caller (ingest hashes on its reader
    /// thread, while this thread writes).
    pub fn insert_message(
        &self,
        msg: &QueuedMessage,
        hash: &ContentHash,
        now: &str,
    ) -> Result<Inserted> {
        let hash = hash.to_hex();
        let env = &msg.envelope;
        let changed = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO messages (content_hash, source_format, source_path, source_offset, \
             source_len, queue_id, size, sender, sender_from, recipients_from, arrival, arrival_unix, \
             arrival_from, envid, ret, ingested_at, queue_name, mta_hold) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?.execute(
            params![
                hash,
                msg.source.format.as_str(),
                msg.source.path.to_string_lossy(),
                msg.source.offset as i64,
                msg.source.len as i64,
                msg.queue_id,
                msg.content.len() as i64,
                env.sender.as_str(),
                env.sender_from.as_str(),
                env.recipients_from.as_str(),
                env.arrival.to_rfc3339(),
                env.arrival.timestamp(),
                env.arrival_from.as_str(),
                env.envid,
                env.ret.map(ret_name),
                now,
                msg.queue_name,
                msg.mta_hold,
            ],
        )?;
        if changed == 0 {
            return Ok(Inserted::Known);
        }
        let message_id = self.tx.last_insert_rowid();
        let mut insert = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO recipients (message_id, address, domain, orcpt, notify, state, reply, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        // Mailboxes compare by `Mailbox::canonical` (`Bob@Example.NET` is `bob@example.net`),
        // against earlier copies of this content and against this envelope's own earlier
        // recipients. Both are maps built once per message: linear in recipients.
        let mut earlier = self.earlier_copies(&hash, message_id)?;
        for rcpt in &env.recipients {
            let domain = rcpt
                .address
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            let notify = rcpt.notify.map(notify_name);
            // What the MTA already did is recorded as settled and never replayed; an exact
            // copy of mail already in the ledger for this mailbox is settled by that copy.
            let mailbox = crate::address::Mailbox::canonical_key(&rcpt.address);
            let duplicate_note = match earlier.get(&mailbox) {
                Some(SeenAt::Earlier(q)) => Some(format!(
                    "exact copy of {q} (same content): that copy's delivery covers it"
                )),
                Some(SeenAt::Sibling(first)) => Some(format!(
                    "same mailbox as `{first}` in this envelope: that recipient's delivery \
                     covers it"
                )),
                None => None,
            };
            if duplicate_note.is_none() {
                earlier.insert(mailbox, SeenAt::Sibling(rcpt.address.clone()));
            }
            let (state, note) = match (rcpt.prior, &duplicate_note) {
                (None, Some(note)) => (RcptState::Duplicate, Some(note.as_str())),
                (None, None) => (RcptState::Pending, None),
                (Some(Prior::Delivered), _) => (
                    RcptState::DeliveredBefore,
                    Some("delivered by the MTA before the spool was copied"),
                ),
                (Some(Prior::Cancelled), _) => {
                    (RcptState::Dropped, Some("cancelled in the MTA queue"))
                }
            };
            if insert.execute(params![
                message_id,
                rcpt.address,
                domain,
                rcpt.orcpt,
                notify,
                state.as_str(),
                note,
                now
            ])? == 1
            {
                let rid = self.tx.last_insert_rowid();
                self.event(rid, None, state, Some(note.unwrap_or("ingested")), now)?;
            }
        }
        self.tx.prepare_cached(
            "UPDATE quarantine SET resolved_at = ?1 WHERE source_path = ?2 AND source_offset = ?3 AND resolved_at IS NULL",
        )?.execute(
            params![now, msg.source.path.to_string_lossy(), msg.source.offset as i64],
        )?;
        Ok(Inserted::New)
    }

    /// The mailboxes (canonical) of earlier messages with the same content, each with the
    /// queue id of the first such message. One query per message; none of this content
    /// before (the usual case) costs one index look-up.
    fn earlier_copies(&self, hash: &str, message_id: i64) -> Result<HashMap<String, SeenAt>> {
        let mut statement = self.tx.prepare_cached(
            "SELECT m.queue_id, r.address FROM messages m JOIN recipients r ON r.message_id = m.id \
             WHERE m.content_hash = ?1 AND m.id < ?2 ORDER BY m.id, r.id",
        )?;
        let mut rows = statement.query(params![hash, message_id])?;
        let mut copies = HashMap::new();
        while let Some(row) = rows.next()? {
            let (queue_id, address): (String, String) = (row.get(0)?, row.get(1)?);
            copies
                .entry(crate::address::Mailbox::canonical_key(&address))
                .or_insert(SeenAt::Earlier(queue_id));
        }
        Ok(copies)
    }

    /// Records a quarantined item; returns false when it was already recorded.
    pub fn insert_quarantine(&self, item: &Quarantined, now: &str) -> Result<bool> {
        let changed = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO quarantine (source_format, source_path, source_offset, reason, first_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?.execute(
            params![
                item.source.format.as_str(),
                item.source.path.to_string_lossy(),
                item.source.offset as i64,
                item.reason,
                now
            ],
        )?;
        Ok(changed == 1)
    }

    /// Moves one recipient from `from` to `to`, checking the transition and that the row
    /// really is in `from` (so two paths can never both act on it).
    pub fn set_state(&self, rcpt: &RecipientRow, to: RcptState, change: Change<'_>) -> Result<()> {
        rcpt.state.check_transition(to)?;
        let now = timestamp();
        let attempted = change.attempted_at.is_some() as i64;
        let reply = if change.audit_only {
            None
        } else {
            change.detail
        };
        let updated = self
            .tx
            .prepare_cached(
                "UPDATE recipients SET state = ?1, updated_at = ?2, \
             reply = coalesce(?3, reply), status = coalesce(?4, status), \
             attempts = attempts + ?5, last_attempt = coalesce(?6, last_attempt), \
             next_attempt = ?9, remote = CASE WHEN ?3 IS NULL THEN remote ELSE ?10 END \
             WHERE id = ?7 AND state = ?8",
            )?
            .execute(params![
                to.as_str(),
                now,
                reply,
                change.status,
                attempted,
                change.attempted_at,
                rcpt.id,
                rcpt.state.as_str(),
                change.next_attempt,
                change.remote,
            ])?;
        if updated != 1 {
            anyhow::bail!(
                "recipient {} of message {} is no longer {} in the ledger (changed by another process?)",
                rcpt.id,
                rcpt.message_id,
                rcpt.state
            );
        }
        self.event(rcpt.id, Some(rcpt.state), to, change.detail, &now)
    }

    fn event(
        &self,
        rid: i64,
        from: Option<RcptState>,
        to: RcptState,
        detail: Option<&str>,
        at: &str,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO events (recipient_id, at, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![rid, at, from.map(RcptState::as_str), to.as_str(), detail])?;
        Ok(())
    }

    /// How many times this recipient was sent again after an uncertain attempt
    /// (`--uncertain redeliver`): the policy resends an uncertain copy at most once.
    pub fn redeliveries(&self, rcpt_id: i64) -> Result<i64> {
        let n = self
            .tx
            .prepare_cached(
                "SELECT count(*) FROM events WHERE recipient_id = ?1 \
                 AND from_state = 'uncertain' AND to_state = 'pending'",
            )?
            .query_row(params![rcpt_id], |row| row.get(0))?;
        Ok(n)
    }

    /// Stores the latest classification of a message (for `status` per window).
    pub fn set_classification(
        &self,
        message_id: i64,
        window: &str,
        disposition: &str,
        deadline: &str,
    ) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE messages SET window = ?1, disposition = ?2, deadline = ?3 WHERE id = ?4",
            )?
            .execute(params![window, disposition, deadline, message_id])?;
        Ok(())
    }
}

const MESSAGE_COLUMNS: &str = "m.id, m.content_hash, m.source_format, m.source_path, m.source_offset, m.source_len, \
     m.queue_id, m.size, m.sender, m.arrival, m.envid, m.ret, m.window, m.disposition, m.queue_name, m.mta_hold, \
     m.arrival_unix";

const RECIPIENT_COLUMNS: &str = "id, message_id, address, domain, orcpt, notify, state, status, reply, attempts, \
     last_attempt, next_attempt, remote, delay_dsn_id";

/// Reads a message row; a row the tool cannot understand is an error naming the row, wrapped
/// in the Result so rusqlite's own error type stays out of the callers.
fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<MessageRow>> {
    let id: i64 = r.get(0)?;
    let format: String = r.get(2)?;
    let arrival: String = r.get(9)?;
    let sender: String = r.get(8)?;
    let build = || -> Result<MessageRow> {
        let format: SpoolFormat = format
            .parse()
            .map_err(|e: String| anyhow::anyhow!("message {id} in the ledger: {e}"))?;
        // RFC 3339 has no year before 0 or after 9999: a row an earlier version ingested
        // with such a time (a Postfix `T` record of -99999999999) is read by its seconds,
        // so that one row does not stop a report of the whole ledger.
        let arrival = match DateTime::parse_from_rfc3339(&arrival) {
            Ok(a) => a,
            Err(e) => r
                .get::<_, i64>(16)
                .ok()
                .and_then(|secs| DateTime::from_timestamp(secs, 0))
                .map(|a| a.fixed_offset())
                .ok_or(e)
                .with_context(|| {
                    format!("message {id} in the ledger has a bad arrival `{arrival}`")
                })?,
        };
        Ok(MessageRow {
            id,
            content_hash: r.get(1)?,
            source: SourceRef {
                format,
                path: PathBuf::from(r.get::<_, String>(3)?),
                offset: r.get::<_, i64>(4)? as u64,
                len: r.get::<_, i64>(5)? as u64,
            },
            queue_id: r.get(6)?,
            size: r.get::<_, i64>(7)? as u64,
            sender: ReversePath::parse(&sender),
            arrival,
            envid: r.get(10)?,
            ret: r.get(11)?,
            window: r.get(12)?,
            disposition: r.get(13)?,
            queue_name: r.get(14)?,
            mta_hold: r.get(15)?,
        })
    };
    Ok(build())
}

fn recipient_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RecipientRow>> {
    let state: String = r.get(6)?;
    let build = || -> Result<RecipientRow> {
        Ok(RecipientRow {
            id: r.get(0)?,
            message_id: r.get(1)?,
            address: r.get(2)?,
            domain: r.get(3)?,
            orcpt: r.get(4)?,
            notify: r.get(5)?,
            state: parse_state(&state)?,
            status: r.get(7)?,
            reply: r.get(8)?,
            attempts: r.get(9)?,
            last_attempt: r.get(10)?,
            next_attempt: r.get(11)?,
            remote: r.get(12)?,
            delay_dsn_id: r.get(13)?,
        })
    };
    Ok(build())
}

fn parse_state(s: &str) -> Result<RcptState> {
    s.parse::<RcptState>().map_err(anyhow::Error::msg)
}

fn ret_name(ret: crate::address::ReturnContent) -> &'static str {
    match ret {
        crate::address::ReturnContent::Full => "FULL",
        crate::address::ReturnContent::Headers => "HDRS",
    }
}

fn notify_name(n: crate::address::Notify) -> String {
    if n.never {
        return "NEVER".to_string();
    }
    let mut parts = Vec::new();
    if n.success {
        parts.push("SUCCESS");
    }
    if n.failure {
        parts.push("FAILURE");
    }
    if n.delay {
        parts.push("DELAY");
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let first = Ledger::open_for_write(&path, "test").unwrap();
        assert_eq!(first.user_version().unwrap(), schema::latest_version());
        drop(first);
        let second = Ledger::open_for_write(&path, "test").unwrap();
        assert_eq!(second.user_version().unwrap(), schema::latest_version());
        assert_eq!(second.message_count().unwrap(), 0);
    }

    fn lookup_index_sql(ledger: &Ledger) -> Vec<String> {
        let mut stmt = ledger
            .conn
            .prepare(
                "SELECT sql FROM sqlite_master WHERE type = 'index' \
                 AND name IN ('recipients_mailbox', 'messages_sender') ORDER BY name",
            )
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn deferred_lookup_indexes_come_back_as_the_migration_made_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut ledger = Ledger::open_for_write(&path, "test").unwrap();
        let migrated = lookup_index_sql(&ledger);
        assert_eq!(migrated.len(), 2, "{migrated:?}");
        assert!(ledger.defer_lookup_indexes().unwrap());
        assert!(lookup_index_sql(&ledger).is_empty());
        // A crash here: the next writer puts them back.
        drop(ledger);
        let ledger = Ledger::open_for_write(&path, "test").unwrap();
        let rebuilt = lookup_index_sql(&ledger);
        assert_eq!(rebuilt.len(), 2);
        for (got, want) in rebuilt.iter().zip(&migrated) {
            assert_eq!(
                got.replace("IF NOT EXISTS ", ""),
                want.replace("IF NOT EXISTS ", "")
            );
        }
    }

    #[test]
    fn a_ledger_with_mail_keeps_its_lookup_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut ledger = Ledger::open_for_write(&path, "test").unwrap();
        ledger
            .conn
            .execute_batch(
                "INSERT INTO messages (content_hash, source_format, source_path, source_offset, \
                 source_len, queue_id, size, sender, sender_from, recipients_from, arrival, \
                 arrival_unix, arrival_from, ingested_at) \
                 VALUES ('h', 'eml', 'p', 0, 1, 'q', 1, '', 's', 'r', 'a', 0, 'a', 'now')",
            )
            .unwrap();
        assert!(!ledger.defer_lookup_indexes().unwrap());
        assert_eq!(lookup_index_sql(&ledger).len(), 2);
    }

    #[test]
    fn a_newer_ledger_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        drop(Ledger::open_for_write(&path, "test").unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::latest_version() + 1)
            .unwrap();
        drop(conn);
        let err = Ledger::open_for_write(&path, "test").err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(crate::exit::exit_for(&err), Exit::DataErr);
        let err = Ledger::open_read(&path).err().unwrap();
        assert_eq!(crate::exit::exit_for(&err), Exit::DataErr);
    }

    #[test]
    fn a_second_writer_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let _held = Ledger::open_for_write(&path, "run").unwrap();
        let err = Ledger::open_for_write(&path, "ingest").err().unwrap();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("spoolreplay run"), "{text}");
        assert_eq!(crate::exit::exit_for(&err), Exit::TempFail);
    }
}
