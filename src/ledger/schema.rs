//! Append-only migrations, keyed on `PRAGMA user_version`. Never edit a released step:
//! add a new one.

/// Step N (1-based) brings the schema from version N-1 to N.
pub const MIGRATIONS: &[&str] = &[
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
];

/// The indexes that serve only look-ups by mailbox and sender (`report --affected`,
/// `audit --recipient/--sender`), as migration 5 made them: a bulk ingest may leave them
/// out and build them at its end (`Ledger::defer_lookup_indexes`). Keep in step with
/// step 5 (a unit test compares them).
pub const LOOKUP_INDEXES: &[(&str, &str)] = &[
    (
        "recipients_mailbox",
        "CREATE INDEX recipients_mailbox ON recipients (lower(address))",
    ),
    (
        "messages_sender",
        "CREATE INDEX messages_sender ON messages (lower(sender))",
    ),
];

pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}
