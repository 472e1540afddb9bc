//! The schema: append-only migrations keyed on `PRAGMA user_version` and their runner,
//! and the look-up indexes a bulk ingest builds once. Never edit a released step: add a
//! new one.

/// Step N (1-based) brings the schema from version N-1 to N.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: messages, recipients, the audit trail, quarantine and DSNs.
    r#"
    CREATE TABLE messages (
        id               INTEGER PRIMARY KEY,
        content_hash     TEXT    NOT NULL,
        source_format    TEXT    NOT NULL,
        source_path      TEXT    NOT NULL,
        source_offset    INTEGER NOT NULL,
        source_len       INTEGER NOT NULL,
        queue_id         TEXT    NOT NULL,
        size             INTEGER NOT NULL,
        sender           TEXT    NOT NULL,  -- '' is the null sender <>
        sender_from      TEXT    NOT NULL,
        recipients_from  TEXT    NOT NULL,
        arrival          TEXT    NOT NULL,  -- RFC 3339, offset as spooled
        arrival_unix     INTEGER NOT NULL,
        arrival_from     TEXT    NOT NULL,
        envid            TEXT,
        ret              TEXT,
        window           TEXT,              -- last classification (NULL: never classified)
        disposition      TEXT,
        deadline         TEXT,
        ingested_at      TEXT    NOT NULL,
        UNIQUE (content_hash, source_path, source_offset)
    );
    CREATE INDEX messages_hash ON messages (content_hash);
    CREATE INDEX messages_queue_id ON messages (queue_id);

    CREATE TABLE recipients (
        id            INTEGER PRIMARY KEY,
        message_id    INTEGER NOT NULL REFERENCES messages (id),
        address       TEXT    NOT NULL,
        domain        TEXT    NOT NULL,     -- lowercased, for reports
        orcpt         TEXT,
        notify        TEXT,
        state         TEXT    NOT NULL,
        status        TEXT,                 -- RFC 3463 code of a failure
        reply         TEXT,                 -- last reply of the store, or our reason
        attempts      INTEGER NOT NULL DEFAULT 0,
        last_attempt  TEXT,
        dsn_id        INTEGER REFERENCES dsns (id),
        updated_at    TEXT    NOT NULL,
        UNIQUE (message_id, address)
    );
    CREATE INDEX recipients_state ON recipients (state, message_id);

    CREATE TABLE events (
        id            INTEGER PRIMARY KEY,
        recipient_id  INTEGER NOT NULL REFERENCES recipients (id),
        at            TEXT    NOT NULL,
        from_state    TEXT,
        to_state      TEXT    NOT NULL,
        detail        TEXT
    );
    CREATE INDEX events_recipient ON events (recipient_id);

    CREATE TABLE quarantine (
        id             INTEGER PRIMARY KEY,
        source_format  TEXT    NOT NULL,
        source_path    TEXT    NOT NULL,
        source_offset  INTEGER NOT NULL,
        reason         TEXT    NOT NULL,
        first_seen     TEXT    NOT NULL,
        resolved_at    TEXT,               -- set when the item was later ingested fine
        UNIQUE (source_path, source_offset, reason)
    );

    CREATE TABLE dsns (
        id            INTEGER PRIMARY KEY,
        message_id    INTEGER NOT NULL REFERENCES messages (id),
        envelope_to   TEXT    NOT NULL,
        rfc_message_id TEXT   NOT NULL,
        created_at    TEXT    NOT NULL,
        content       BLOB    NOT NULL,
        written_path  TEXT,
        written_at    TEXT
    );
    CREATE INDEX dsns_message ON dsns (message_id);
    "#,
    // 2: where an MTA queue held the message, and whether the MTA itself was holding it.
    r#"
    ALTER TABLE messages ADD COLUMN queue_name TEXT;
    ALTER TABLE messages ADD COLUMN mta_hold INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: retry scheduling of deferred recipients, and which server gave the last reply.
    r#"
    ALTER TABLE recipients ADD COLUMN next_attempt INTEGER;  -- unix seconds; NULL: now
    ALTER TABLE recipients ADD COLUMN remote TEXT;           -- server of the last reply
    "#,
    // 4: DSN kinds (failure, delay warning, postmaster copy) and their sending over SMTP;
    // which delay warning a recipient got.
    r#"
    ALTER TABLE dsns ADD COLUMN kind TEXT NOT NULL DEFAULT 'failure';
    ALTER TABLE dsns ADD COLUMN send_state TEXT NOT NULL DEFAULT 'pending';
    ALTER TABLE dsns ADD COLUMN sent_at TEXT;
    ALTER TABLE dsns ADD COLUMN send_reply TEXT;
    CREATE INDEX dsns_send_state ON dsns (send_state);
    ALTER TABLE recipients ADD COLUMN delay_dsn_id INTEGER REFERENCES dsns (id);
    "#,
    // 5: mailbox and sender look-ups for `report --affected` and `audit --recipient/--sender`
    // (addresses compare case-insensitively, so the index is on lower()).
    r#"
    CREATE INDEX recipients_mailbox ON recipients (lower(address));
    CREATE INDEX messages_sender ON messages (lower(sender));
    "#,
    // 6: `messages_hash` repeated the first column of the UNIQUE (content_hash, source_path,
    // source_offset) index, which serves the same look-ups; one random-key index update
    // less per ingested message.
    r#"
    DROP INDEX messages_hash;
    "#,
    // 7: facts about the ledger as a whole, as key/value pairs; first `shard`: the shard of
    // its spools it holds (`I/N`, or `all`), written by the first ingest.
    r#"
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    "#,
    // 8: steering requests from `spoolreplay control` (pause, resume, rate N/s) to the
    // run working on this ledger, which polls for rows newer than the last it obeyed.
    r#"
    CREATE TABLE steering (
        id         INTEGER PRIMARY KEY,
        requested_at TEXT NOT NULL,
        command    TEXT NOT NULL CHECK (command IN ('pause', 'resume', 'rate')),
        rate       TEXT
    );
    "#,
    // 9: the reply code and the enhanced status the store sent with the last reply (NULL
    // when the reply was our own words), so `status` groups by them and expiry reads the
    // code rather than parse `reply`. Rows written before are filled from the reply text,
    // which was the reply's one-line form (`452 4.2.2 text`) when a server gave one; an
    // enhanced code only in RFC 3463's shape and of the reply code's class, as the reply
    // parser keeps it (`dsn::status_for_reply` checks it again when it reads it).
    r#"
    ALTER TABLE recipients ADD COLUMN reply_code INTEGER;
    ALTER TABLE recipients ADD COLUMN reply_status TEXT;
    UPDATE recipients SET reply_code = CAST(substr(reply, 1, 3) AS INTEGER)
     WHERE reply GLOB '[2-5][0-9][0-9]' OR reply GLOB '[2-5][0-9][0-9] *';
    UPDATE recipients SET reply_status = substr(reply, 5, instr(substr(reply, 5) || ' ', ' ') - 1)
     WHERE reply_code IS NOT NULL;
    UPDATE recipients SET reply_status = NULL
     WHERE reply_status IS NOT NULL AND NOT (
           substr(reply_status, 1, 1) = substr(reply, 1, 1)
       AND reply_status GLOB '[245].[0-9]*.[0-9]*'
       AND reply_status NOT GLOB '*[^0-9.]*'
       AND reply_status NOT GLOB '*.*.*.*'
       AND length(reply_status) <= 9);
    "#,
    // 10: the table rebuilt with compact keys for a large ingest (issue 19). The UNIQUE
    // key goes path first, so inserts in walk order (every reader walks in sorted order)
    // append to its right edge instead of dirtying a random page of a 140 MB index per
    // message at 1M; look-ups by content go through `content_key`, the hash's first 8
    // bytes (a generated column: derived from `content_hash`, nothing new to keep in
    // step), an index a fifth the size. Columns, ids and rows are kept as they were; the
    // runner turns foreign keys off around this step and checks them before it commits.
    r#"
    CREATE TABLE messages_v10 (
        id               INTEGER PRIMARY KEY,
        content_hash     TEXT    NOT NULL,
        source_format    TEXT    NOT NULL,
        source_path      TEXT    NOT NULL,
        source_offset    INTEGER NOT NULL,
        source_len       INTEGER NOT NULL,
        queue_id         TEXT    NOT NULL,
        size             INTEGER NOT NULL,
        sender           TEXT    NOT NULL,
        sender_from      TEXT    NOT NULL,
        recipients_from  TEXT    NOT NULL,
        arrival          TEXT    NOT NULL,
        arrival_unix     INTEGER NOT NULL,
        arrival_from     TEXT    NOT NULL,
        envid            TEXT,
        ret              TEXT,
        window           TEXT,
        disposition      TEXT,
        deadline         TEXT,
        ingested_at      TEXT    NOT NULL,
        queue_name       TEXT,
        mta_hold         INTEGER NOT NULL DEFAULT 0,
        -- NULL for a hash that is not hex (none written by spoolreplay)
        content_key      BLOB GENERATED ALWAYS AS (unhex(substr(content_hash, 1, 16))) VIRTUAL,
        UNIQUE (source_path, source_offset, content_hash)
    );
    INSERT INTO messages_v10 (id, content_hash, source_format, source_path, source_offset,
        source_len, queue_id, size, sender, sender_from, recipients_from, arrival,
        arrival_unix, arrival_from, envid, ret, window, disposition, deadline, ingested_at,
        queue_name, mta_hold)
    SELECT id, content_hash, source_format, source_path, source_offset,
        source_len, queue_id, size, sender, sender_from, recipients_from, arrival,
        arrival_unix, arrival_from, envid, ret, window, disposition, deadline, ingested_at,
        queue_name, mta_hold
    FROM messages ORDER BY id;
    DROP TABLE messages;
    ALTER TABLE messages_v10 RENAME TO messages;
    CREATE INDEX messages_queue_id ON messages (queue_id);
    CREATE INDEX messages_content ON messages (content_key);
    CREATE INDEX messages_sender ON messages (lower(sender));
    "#,
];

/// Steps that rebuild a table others refer to, which SQLite allows only with foreign
/// keys off (its "making other kinds of table schema changes" procedure).
const REBUILDS: &[i64] = &[10];

/// The indexes that serve only look-ups by mailbox and sender (`report --affected`,
/// `audit --recipient/--sender`), as migration 5 made them: a bulk ingest may leave them
/// out and build them at its end (`Ledger::defer_lookup_indexes`). Keep in step with
/// step 5 (a unit test compares them).
pub(super) const LOOKUP_INDEXES: &[(&str, &str)] = &[
    (
        "recipients_mailbox",
        "CREATE INDEX recipients_mailbox ON recipients (lower(address))",
    ),
    (
        "messages_sender",
        "CREATE INDEX messages_sender ON messages (lower(sender))",
    ),
];

pub(super) fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

// The runner: applies the steps above that a ledger has not seen, one transaction each.

use anyhow::{Context, Result};

use super::Ledger;
use super::open::WRITER_CACHE_KIB;
use crate::exit::{Exit, failure};

impl Ledger {
    pub(super) fn user_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.corrupt_or(e, "cannot read ledger"))
    }

    pub(super) fn migrate(&mut self) -> Result<()> {
        let version = self.user_version()?;
        let latest = latest_version();
        if version > latest {
            return Err(failure(
                Exit::DataErr,
                format!(
                    "ledger `{}` has schema version {version}, newer than this spoolreplay knows ({latest})",
                    self.path.display()
                ),
            ));
        }
        for (index, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let next = index as i64 + 1;
            let context = || format!("cannot migrate ledger to version {next}");
            let rebuild = REBUILDS.contains(&next);
            if rebuild {
                // Outside the transaction: SQLite ignores this pragma inside one.
                self.conn
                    .pragma_update(None, "foreign_keys", false)
                    .with_context(context)?;
            }
            let result = (|| -> Result<()> {
                let tx = self.conn.transaction()?;
                tx.execute_batch(step)?;
                if rebuild {
                    let broken: i64 =
                        tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                            r.get(0)
                        })?;
                    anyhow::ensure!(broken == 0, "{broken} rows lost the row they refer to");
                }
                tx.pragma_update(None, "user_version", next)?;
                tx.commit()?;
                Ok(())
            })();
            if rebuild {
                self.conn
                    .pragma_update(None, "foreign_keys", true)
                    .with_context(context)?;
            }
            result.with_context(context)?;
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
        for (name, _) in LOOKUP_INDEXES {
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
        for (_, create) in LOOKUP_INDEXES {
            self.conn
                .execute_batch(&create.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))
                .with_context(context)?;
        }
        self.conn
            .pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .with_context(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;
    use rusqlite::Connection;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let first = Ledger::open_for_write(&path, "test").unwrap();
        assert_eq!(first.user_version().unwrap(), latest_version());
        drop(first);
        let second = Ledger::open_for_write(&path, "test").unwrap();
        assert_eq!(second.user_version().unwrap(), latest_version());
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
        conn.pragma_update(None, "user_version", latest_version() + 1)
            .unwrap();
        drop(conn);
        let err = Ledger::open_for_write(&path, "test").err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(crate::exit::exit_for(&err), Exit::DataErr);
        let err = Ledger::open_read(&path).err().unwrap();
        assert_eq!(crate::exit::exit_for(&err), Exit::DataErr);
    }

    /// A ledger at version 7 (before reply codes were stored) gets them filled from the
    /// reply text its recipients kept, and nothing from text that was our own words.
    #[test]
    fn reply_codes_are_filled_from_replies_stored_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        for step in &MIGRATIONS[..7] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
        conn.execute_batch(
            "INSERT INTO messages (id, content_hash, source_format, source_path, source_offset, \
             source_len, queue_id, size, sender, sender_from, recipients_from, arrival, \
             arrival_unix, arrival_from, ingested_at) \
             VALUES (1, 'h', 'eml', 'p', 0, 1, 'q', 1, '', 's', 'r', 'a', 0, 'a', 'now')",
        )
        .unwrap();
        let replies = [
            "452 4.2.2 <full@example.test> Quota exceeded",
            "421 service not available",
            "550 5.1.1 <bob@example.test>: no such user",
            "451 5.7.1 a class that disagrees",
            "452 4.2.2.2 not an enhanced code",
            "550 5.1.x not one either",
            "250",
            "connection lost at DATA: reset by peer",
            "unexpected reply to DATA: 250 ok",
            "99 bottles",
        ];
        for (i, reply) in replies.iter().enumerate() {
            conn.execute(
                "INSERT INTO recipients (message_id, address, domain, state, reply, updated_at) \
                 VALUES (1, ?1, 'example.test', 'deferred', ?2, 'now')",
                rusqlite::params![format!("r{i}@example.test"), reply],
            )
            .unwrap();
        }
        drop(conn);
        let ledger = Ledger::open_for_write(&path, "test").unwrap();
        let got: Vec<(Option<u16>, Option<String>)> = ledger
            .recipients_of(1)
            .unwrap()
            .into_iter()
            .map(|r| (r.reply_code, r.reply_status))
            .collect();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            got,
            vec![
                (Some(452), s("4.2.2")),
                (Some(421), None),
                (Some(550), s("5.1.1")),
                (Some(451), None),
                (Some(452), None),
                (Some(550), None),
                (Some(250), None),
                (None, None),
                (None, None),
                (None, None),
            ]
        );
    }
}

/// Migration 10 on a ledger the version before made: rows, ids, indexes and both kinds of
/// dedupe survive, and the content look-ups use the compact index.
#[cfg(test)]
mod rebuild_tests {
    use super::*;
    use crate::ledger::Inserted;
    use crate::spool::{ContentHash, HashRule, QueuedMessage, SpoolFormat, SpoolItem};
    use rusqlite::types::Value;
    use rusqlite::{Connection, params};

    /// Two messages, then a copy of the first one's content at another offset.
    const MBOX: &str = "From alice@example.org Mon Jan 23 10:00:00 2023\n\
        Delivered-To: bob@example.net\n\
        From: alice@example.org\n\
        Subject: one\n\
        Date: Mon, 23 Jan 2023 09:59:00 +0000\n\
        \n\
        First.\n\
        \n\
        From carol@example.org Tue Jan 24 11:30:00 2023\n\
        X-Original-To: erin@example.net\n\
        From: carol@example.org\n\
        Subject: two\n\
        Date: Tue, 24 Jan 2023 11:29:00 +0000\n\
        \n\
        Second.\n\
        \n\
        From alice@example.org Mon Jan 23 10:05:00 2023\n\
        Delivered-To: bob@example.net\n\
        From: alice@example.org\n\
        Subject: one\n\
        Date: Mon, 23 Jan 2023 09:59:00 +0000\n\
        \n\
        First.\n";

    fn messages(spool: &std::path::Path) -> Vec<QueuedMessage> {
        let (_, reader) = crate::spool::open(spool, Some(SpoolFormat::Mbox)).unwrap();
        let all: Vec<QueuedMessage> = reader
            .map(|item| match item {
                SpoolItem::Message(m) => m,
                SpoolItem::Quarantined(q) => panic!("quarantined: {q:?}"),
            })
            .collect();
        assert_eq!(all.len(), 3);
        all
    }

    /// Every row of every table (the columns version 9 had), in rowid order.
    fn snapshot(conn: &Connection, columns: &str) -> Vec<(String, Vec<Vec<Value>>)> {
        let tables = [
            ("messages", columns),
            ("recipients", "*"),
            ("events", "*"),
            ("quarantine", "*"),
            ("dsns", "*"),
            ("meta", "*"),
            ("steering", "*"),
        ];
        tables
            .iter()
            .map(|(table, cols)| {
                let mut stmt = conn
                    .prepare(&format!("SELECT {cols} FROM {table} ORDER BY rowid"))
                    .unwrap();
                let n = stmt.column_count();
                let rows = stmt
                    .query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
                    .unwrap()
                    .collect::<rusqlite::Result<Vec<Vec<Value>>>>()
                    .unwrap();
                (table.to_string(), rows)
            })
            .collect()
    }

    fn indexes(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare(
                "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let details: Vec<String> = stmt
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        details.join("; ")
    }

    #[test]
    fn a_version_9_ledger_keeps_its_rows_indexes_and_dedupe_through_the_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("inbox.mbox");
        std::fs::write(&spool, MBOX).unwrap();
        let mut read = messages(&spool);
        let ids: Vec<ContentHash> = read
            .iter_mut()
            .map(|m| m.identify(HashRule::LfForm))
            .collect();
        let hashes: Vec<String> = ids.iter().map(ContentHash::to_hex).collect();
        assert_eq!(hashes[0], hashes[2], "the third is a copy of the first");
        assert_ne!(hashes[0], hashes[1]);

        // Version 9, with what its ingest and a run wrote for the first two messages.
        let path = dir.path().join("l.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")
            .unwrap();
        for step in &MIGRATIONS[..9] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", 9).unwrap();
        for (i, m) in read[..2].iter().enumerate() {
            let env = &m.envelope;
            conn.execute(
                "INSERT INTO messages (content_hash, source_format, source_path, source_offset, \
                 source_len, queue_id, size, sender, sender_from, recipients_from, arrival, \
                 arrival_unix, arrival_from, envid, ret, window, disposition, deadline, \
                 ingested_at, queue_name, mta_hold) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
                 ?16, ?17, ?18, 'x', ?19, ?20)",
                params![
                    hashes[i],
                    m.source.format.as_str(),
                    m.source.path.to_string_lossy(),
                    m.source.offset as i64,
                    m.source.len as i64,
                    m.queue_id,
                    m.content.len() as i64,
                    env.sender.as_str(),
                    env.sender_from.as_str(),
                    env.recipients_from.as_str(),
                    env.arrival.to_rfc3339(),
                    env.arrival.timestamp(),
                    env.arrival_from.as_str(),
                    (i == 1).then_some("envid-2"),
                    (i == 1).then_some("HDRS"),
                    (i == 1).then_some("spooled"),
                    (i == 1).then_some("deliver"),
                    (i == 1).then_some("2023-01-29T00:00:00Z"),
                    (i == 1).then_some("deferred"),
                    i == 1,
                ],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO dsns (id, message_id, envelope_to, rfc_message_id, created_at, content, \
               kind, send_state) VALUES (5, 2, 'carol@example.org', '<d@x>', 'x', x'00', 'failure', 'sent');
             INSERT INTO recipients (id, message_id, address, domain, state, reply, attempts, \
               dsn_id, updated_at, reply_code, reply_status) VALUES \
               (1, 1, 'bob@example.net', 'example.net', 'pending', NULL, 0, NULL, 'x', NULL, NULL), \
               (2, 2, 'erin@example.net', 'example.net', 'bounced', '550 5.1.1 no such user', 1, 5, 'x', 550, '5.1.1');
             INSERT INTO events (recipient_id, at, from_state, to_state, detail) VALUES \
               (1, 'x', NULL, 'pending', 'ingested'), (2, 'x', NULL, 'pending', 'ingested'), \
               (2, 'y', 'in_flight', 'failed', '550 5.1.1 no such user'), (2, 'z', 'failed', 'bounced', 'dsn 5');
             INSERT INTO quarantine (source_format, source_path, source_offset, reason, first_seen) \
               VALUES ('mbox', '/s/other.mbox', 7, 'no recipients', 'x');
             INSERT INTO meta (key, value) VALUES ('shard', 'all'), ('content_hash', 'lf');
             INSERT INTO steering (requested_at, command, rate) VALUES ('x', 'rate', '5/s');",
        )
        .unwrap();
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('messages') ORDER BY cid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let columns = columns.join(", ");
        let before = snapshot(&conn, &columns);
        let indexes_before = indexes(&conn);
        drop(conn);

        let mut ledger = Ledger::open_for_write(&path, "test").unwrap();
        assert_eq!(ledger.user_version().unwrap(), 10);
        assert_eq!(snapshot(&ledger.conn, &columns), before);
        let mut want = indexes_before.clone();
        want.push((
            "messages_content".into(),
            "messages".into(),
            Some("CREATE INDEX messages_content ON messages (content_key)".into()),
        ));
        want.sort();
        assert_eq!(indexes(&ledger.conn), want);
        let fk: bool = ledger
            .conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(fk, "foreign keys are on again after the rebuild");
        let broken: i64 = ledger
            .conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(broken, 0);
        let key: Vec<u8> = ledger
            .conn
            .query_row("SELECT content_key FROM messages WHERE id = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(key, ids[0].0[..8]);

        // Dedupe by source: the two messages it held are known; by content: the copy is
        // new, its mailbox settled by the first copy.
        let inserted: Vec<Inserted> = ledger
            .write(|tx| {
                read.iter()
                    .zip(&ids)
                    .map(|(m, hash)| tx.insert_message(m, hash, "now"))
                    .collect()
            })
            .unwrap();
        assert!(
            matches!(
                inserted[..],
                [Inserted::Known, Inserted::Known, Inserted::New]
            ),
            "{inserted:?}"
        );
        let copy = ledger.recipients_of(3).unwrap();
        assert_eq!(copy.len(), 1);
        assert_eq!(copy[0].state, crate::ledger::RcptState::Duplicate);
        let second = &read[1].source;
        let offset = second.offset as i64;
        let path = second.path.to_string_lossy();
        assert!(ledger.holds_source(&hashes[1], &path, offset).unwrap());
        assert!(!ledger.holds_source(&hashes[0], &path, offset).unwrap());

        // The look-ups by content use the compact index, the merge of duplicates streams.
        let earlier = plan(
            &ledger.conn,
            "SELECT m.queue_id FROM messages m JOIN recipients r ON r.message_id = m.id \
             WHERE m.content_key = unhex(substr('ab', 1, 16)) AND m.content_hash = 'ab' AND m.id < 9",
        );
        assert!(earlier.contains("messages_content"), "{earlier}");
        let merge = plan(
            &ledger.conn,
            "SELECT content_key, content_hash, id, queue_id FROM messages \
             ORDER BY content_key, content_hash",
        );
        assert!(merge.contains("messages_content"), "{merge}");
        assert!(!merge.contains("TEMP B-TREE FOR ORDER BY"), "{merge}");
    }
}
