//! Facts about the ledger as a whole (the `meta` table): which shard of its spools it
//! holds, and how its content hashes are taken. A ledger belongs to one shard, so two
//! shards never mix in one file and a combined report can say what it combined; its hash
//! rule never changes, so a spool read again finds the rows it made.

use anyhow::{Context, Result};
use rusqlite::{OptionalExtension, params};

use super::Ledger;
use crate::exit::{Exit, Failure, failure};
use crate::shard::ShardSpec;
use crate::spool::HashRule;

const SHARD_KEY: &str = "shard";
/// How content hashes are taken (`HashRule`): `lf` (over the LF form) or `bytes`.
const HASH_KEY: &str = "content_hash";
const LF_FORM: &str = "lf";
const BYTES: &str = "bytes";
/// The recorded value of a ledger ingested without `--shard`.
const WHOLE: &str = "all";

/// A ledger's shard as a person reads it.
pub fn describe(shard: Option<ShardSpec>) -> String {
    match shard {
        Some(s) => format!("shard {s}"),
        None => "whole spools".to_string(),
    }
}

impl Ledger {
    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .with_context(|| format!("cannot read ledger `{}`", self.path.display()))
    }

    /// The shard this ledger holds; `None`: whole spools (ingested without `--shard`, or
    /// not ingested into yet).
    pub fn shard(&self) -> Result<Option<ShardSpec>> {
        match self.meta(SHARD_KEY)?.as_deref() {
            None | Some(WHOLE) => Ok(None),
            Some(spec) => spec.parse().map(Some).map_err(|e| {
                failure(
                    Exit::DataErr,
                    format!("ledger `{}` records a bad shard: {e}", self.path.display()),
                )
            }),
        }
    }

    /// Makes sure this ledger holds `wanted` (`None`: whole spools): records it on the
    /// first ingest, refuses another shard (or none) later. A ledger ingested before shards
    /// were recorded holds whole spools.
    pub fn claim_shard(&mut self, wanted: Option<ShardSpec>) -> Result<()> {
        let recorded = match self.meta(SHARD_KEY)? {
            Some(_) => Some(self.shard()?),
            None if self.holds_anything()? => Some(None),
            None => None,
        };
        match recorded {
            Some(held) if held == wanted => Ok(()),
            Some(held) => Err(self.shard_mismatch(held, wanted)),
            None => self.write(|tx| {
                let value = wanted.map_or(WHOLE.to_string(), |s| s.to_string());
                tx.tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                    params![SHARD_KEY, value],
                )?;
                Ok(())
            }),
        }
    }

    /// How this ledger's content hashes are taken: as recorded, or for a ledger that holds
    /// messages and records none (made before the rule was recorded) the bytes as read.
    pub fn hash_rule(&self) -> Result<HashRule> {
        match self.meta(HASH_KEY)?.as_deref() {
            Some(LF_FORM) => Ok(HashRule::LfForm),
            Some(BYTES) => Ok(HashRule::Bytes),
            Some(other) => Err(failure(
                Exit::DataErr,
                format!(
                    "ledger `{}` records an unknown content hash rule `{other}`: it was made \
                     by a newer spoolreplay",
                    self.path.display()
                ),
            )),
            None if self.holds_messages()? => Ok(HashRule::Bytes),
            None => Ok(HashRule::LfForm),
        }
    }

    /// The rule ingest hashes by, recorded on the first ingest so it never changes for
    /// the rows a ledger holds.
    pub fn claim_hash_rule(&mut self) -> Result<HashRule> {
        let rule = self.hash_rule()?;
        if self.meta(HASH_KEY)?.is_none() {
            let value = match rule {
                HashRule::LfForm => LF_FORM,
                HashRule::Bytes => BYTES,
            };
            self.write(|tx| {
                tx.tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                    params![HASH_KEY, value],
                )?;
                Ok(())
            })?;
        }
        Ok(rule)
    }

    fn holds_messages(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM messages)", [], |r| r.get(0))?)
    }

    fn holds_anything(&self) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM messages) OR EXISTS (SELECT 1 FROM quarantine)",
            [],
            |r| r.get(0),
        )?)
    }

    fn shard_mismatch(&self, held: Option<ShardSpec>, wanted: Option<ShardSpec>) -> anyhow::Error {
        let ledger = self.path.display();
        let message = match (held, wanted) {
            (Some(h), None) => format!(
                "ledger `{ledger}` holds shard {h} of its spool: ingest into it with --shard {h} \
                 (without it the other shards' mail would be added)"
            ),
            (_, Some(w)) => format!(
                "--shard {w}: ledger `{ledger}` holds {}, and a ledger holds one shard",
                describe(held)
            ),
            (None, None) => format!("ledger `{ledger}`: shard records disagree"),
        };
        anyhow::Error::new(
            Failure::new(Exit::Usage, message)
                .with_hint("give each shard a ledger of its own, e.g. --ledger shard-2-of-8.db"),
        )
    }

    /// Whether this ledger holds the message read from `source_path` at `source_offset`
    /// with this content: two ledgers that share a message hold the same spool (or shard).
    pub fn holds_source(
        &self,
        content_hash: &str,
        source_path: &str,
        source_offset: i64,
    ) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE content_hash = ?1 AND source_path = ?2 \
             AND source_offset = ?3)",
            params![content_hash, source_path, source_offset],
            |r| r.get(0),
        )?)
    }

    /// The first message ingested (content hash, source path, offset), if any.
    pub fn first_source(&self) -> Result<Option<(String, String, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT content_hash, source_path, source_offset FROM messages ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Option<ShardSpec> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_first_ingest_records_the_shard_and_later_ones_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut l = Ledger::open_for_write(&path, "test").unwrap();
        assert_eq!(l.shard().unwrap(), None);
        l.claim_shard(spec("2/3")).unwrap();
        l.claim_shard(spec("2/3")).unwrap();
        assert_eq!(l.shard().unwrap(), spec("2/3"));
        for other in [spec("1/3"), spec("2/4"), None] {
            let err = l.claim_shard(other).err().unwrap();
            assert_eq!(crate::exit::exit_for(&err), Exit::Usage, "{err}");
            assert!(err.to_string().contains("2/3"), "{err}");
        }
    }

    #[test]
    fn a_ledger_with_mail_but_no_record_holds_whole_spools() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut l = Ledger::open_for_write(&path, "test").unwrap();
        l.conn
            .execute(
                "INSERT INTO quarantine (source_format, source_path, source_offset, reason, first_seen) \
                 VALUES ('eml', '/s/x.eml', 0, 'empty', 'x')",
                [],
            )
            .unwrap();
        let err = l.claim_shard(spec("1/2")).err().unwrap();
        assert!(err.to_string().contains("whole spools"), "{err}");
        l.claim_shard(None).unwrap();
    }
}
