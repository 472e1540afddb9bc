//! Reading several ledgers as one (`report --ledger a.db --ledger b.db`): one ledger per
//! MX host, or per shard of a big spool. Each is opened read-only. What adds up is added
//! by the caller; what does not (distinct senders, duplicate content across ledgers,
//! mailboxes with mail in several ledgers) is merged here from streams that each ledger
//! returns already sorted, holding one row per ledger (plus one group) at a time.

use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::queries::{
    DuplicateGroup, MailboxRow, SenderDomainRow, mailbox_row, mailbox_sql, sender_sql,
};
use super::{Ledger, RcptState};
use crate::exit::{Exit, Failure};

/// Opens every ledger read-only. The same file twice, or two ledgers holding the same spool
/// message (the same spool, or the same shard of it, ingested twice), is refused: the
/// combined counts would count that mail twice.
pub fn open_all(paths: &[PathBuf]) -> Result<Vec<Ledger>> {
    let mut ledgers: Vec<Ledger> = Vec::with_capacity(paths.len());
    let mut seen: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for path in paths {
        let ledger = Ledger::open_read(path)?;
        let canonical = canonical(path)?;
        if let Some(i) = seen.iter().position(|p| *p == canonical) {
            return Err(usage(format!(
                "--ledger `{}` is the same ledger as `{}`: give each ledger once",
                path.display(),
                paths[i].display()
            )));
        }
        seen.push(canonical);
        ledgers.push(ledger);
    }
    refuse_overlap(&ledgers)?;
    Ok(ledgers)
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| {
        anyhow::Error::new(e).context(Failure::new(
            Exit::IoErr,
            format!("cannot resolve ledger `{}`", path.display()),
        ))
    })
}

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(
        Failure::new(Exit::Usage, message).with_hint(
            "combine one ledger per MX host or per shard (`ingest --shard I/N`), each once",
        ),
    )
}

/// Each ledger's first message looked up in every other: a cheap probe (one index look-up
/// per pair) that catches a spool or shard ingested into two ledgers, a copied ledger, and
/// a whole-spool ledger given with its own shards.
fn refuse_overlap(ledgers: &[Ledger]) -> Result<()> {
    for (i, a) in ledgers.iter().enumerate() {
        let Some((hash, path, offset)) = a.first_source()? else {
            continue;
        };
        for (j, b) in ledgers.iter().enumerate() {
            if i != j && b.holds_source(&hash, &path, offset)? {
                return Err(usage(format!(
                    "ledgers `{}` and `{}` both hold the message read from `{path}`: the same \
                     spool (or shard) was ingested into both, and combining them would count \
                     its mail twice",
                    a.path().display(),
                    b.path().display()
                )));
            }
        }
    }
    Ok(())
}

/// A stream of rows sorted by key.
type Sorted<'a, K, V> = Box<dyn Iterator<Item = Result<(K, V)>> + 'a>;

/// Walks several streams, each sorted by key, in key order, calling `f` once per key with
/// the rows (and the index of the stream) that have it.
fn merge_sorted<K: Ord + Clone, V>(
    mut streams: Vec<Sorted<'_, K, V>>,
    mut f: impl FnMut(K, Vec<(usize, V)>) -> Result<()>,
) -> Result<()> {
    let mut heads: Vec<Option<(K, V)>> = streams
        .iter_mut()
        .map(|s| s.next().transpose())
        .collect::<Result<_>>()?;
    loop {
        let Some(key) = heads.iter().flatten().map(|(k, _)| k).min().cloned() else {
            return Ok(());
        };
        let mut group = Vec::new();
        for (i, stream) in streams.iter_mut().enumerate() {
            while heads[i].as_ref().is_some_and(|(k, _)| *k == key) {
                if let Some((_, v)) = heads[i].take() {
                    group.push((i, v));
                }
                heads[i] = stream.next().transpose()?;
            }
        }
        f(key, group)?;
    }
}

/// The same query prepared on each ledger, for streams merged in step.
fn prepare_all<'l>(ledgers: &'l [Ledger], sql: &str) -> Result<Vec<rusqlite::Statement<'l>>> {
    Ok(ledgers
        .iter()
        .map(|l| l.conn.prepare(sql))
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Affected mailboxes across ledgers, in mailbox order: a mailbox with mail in several
/// ledgers is one row (counts added, the worst delay the largest).
pub fn for_each_affected_mailbox(
    ledgers: &[Ledger],
    mut f: impl FnMut(&MailboxRow) -> Result<()>,
) -> Result<()> {
    let mut statements = prepare_all(ledgers, &mailbox_sql())?;
    let streams = statements
        .iter_mut()
        .map(|s| -> Result<Sorted<'_, String, MailboxRow>> {
            let rows = s.query_and_then([], |r| -> Result<(String, MailboxRow)> {
                let row = mailbox_row(r)?;
                Ok((row.mailbox.clone(), row))
            })?;
            Ok(Box::new(rows))
        })
        .collect::<Result<Vec<_>>>()?;
    merge_sorted(streams, |mailbox, rows| {
        let mut total = MailboxRow {
            mailbox,
            ..MailboxRow::default()
        };
        for (_, row) in &rows {
            total.absorb(row);
        }
        if total.is_affected() {
            f(&total)?;
        }
        Ok(())
    })
}

/// Sender domains sent DSNs across ledgers, most DSNs first (ties by name); a sender
/// bounced to from several ledgers counts once in `senders`. Memory: one row per domain.
pub fn bounced_sender_domains(ledgers: &[Ledger]) -> Result<Vec<SenderDomainRow>> {
    let mut statements = prepare_all(ledgers, &sender_sql())?;
    let streams = statements
        .iter_mut()
        .map(|s| -> Result<Sorted<'_, (String, String), (u64, u64)>> {
            let rows = s.query_and_then([], |r| -> Result<_> {
                let count = |i: usize| -> rusqlite::Result<u64> {
                    Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
                };
                Ok(((r.get(0)?, r.get(1)?), (count(2)?, count(3)?)))
            })?;
            Ok(Box::new(rows))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut domains: Vec<SenderDomainRow> = Vec::new();
    merge_sorted(streams, |(domain, _sender), rows| {
        if domains.last().is_none_or(|d| d.sender_domain != domain) {
            domains.push(SenderDomainRow {
                sender_domain: domain,
                ..SenderDomainRow::default()
            });
        }
        if let Some(d) = domains.last_mut() {
            d.senders += 1;
            for (_, (dsns, recipients)) in rows {
                d.dsns += dsns;
                d.recipients += recipients;
            }
        }
        Ok(())
    })?;
    domains.sort_by(|a, b| {
        b.dsns
            .cmp(&a.dsns)
            .then_with(|| a.sender_domain.cmp(&b.sender_domain))
    });
    Ok(domains)
}

/// Groups of messages with the same content across ledgers (copies in two shards or on
/// two MX hosts included): how many groups, how many extra copies, and the first `limit`
/// groups (by ledger, then by ledger order of their first copy; queue ids in that order).
pub fn duplicates(ledgers: &[Ledger], limit: usize) -> Result<(u64, u64, Vec<DuplicateGroup>)> {
    // Sorted by the `messages_content` index (`content_key`, the hash's first 8 bytes),
    // then within a key: streamed, sorting only the few rows that share a key. The merge
    // compares the same pair, in SQLite's order (NULL first, then bytes as `memcmp`).
    let sql = "SELECT content_key, content_hash, id, queue_id FROM messages \
               ORDER BY content_key, content_hash";
    let mut statements = prepare_all(ledgers, sql)?;
    type Key = (Option<Vec<u8>>, String);
    let streams = statements
        .iter_mut()
        .map(|s| -> Result<Sorted<'_, Key, (i64, String)>> {
            let rows = s.query_and_then([], |r| -> Result<_> {
                Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))
            })?;
            Ok(Box::new(rows))
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut groups, mut extra) = (0u64, 0u64);
    // The `limit` groups that come first, largest first so the heap drops it.
    let mut first: BinaryHeap<((usize, i64), DuplicateGroup)> = BinaryHeap::new();
    merge_sorted(streams, |(_, content_hash), rows| {
        if rows.len() < 2 {
            return Ok(());
        }
        groups += 1;
        extra += rows.len() as u64 - 1;
        let mut copies: Vec<(usize, i64, String)> = rows
            .into_iter()
            .map(|(ledger, (id, queue_id))| (ledger, id, queue_id))
            .collect();
        copies.sort();
        let order = (copies[0].0, copies[0].1);
        first.push((
            order,
            DuplicateGroup {
                content_hash,
                queue_ids: copies.into_iter().map(|c| c.2).collect(),
            },
        ));
        if first.len() > limit {
            first.pop();
        }
        Ok(())
    })?;
    let shown = first
        .into_sorted_vec()
        .into_iter()
        .map(|(_, g)| g)
        .collect();
    Ok((groups, extra, shown))
}

/// Recipients per (domain, state) across ledgers, in (domain, state) order. Memory: one
/// entry per domain and state, as for one ledger.
pub fn domain_state_counts(ledgers: &[Ledger]) -> Result<Vec<(String, RcptState, u64)>> {
    let mut total: BTreeMap<(String, RcptState), u64> = BTreeMap::new();
    for ledger in ledgers {
        for (domain, state, n) in ledger.domain_state_counts()? {
            *total.entry((domain, state)).or_default() += n;
        }
    }
    Ok(total.into_iter().map(|((d, s), n)| (d, s, n)).collect())
}

/// `--order fair`'s first round over several ledgers: each run goes round its own
/// mailboxes, so the rounds add.
pub fn fair_first_round(ledgers: &[Ledger], now_unix: i64) -> Result<u64> {
    let mut total = 0;
    for l in ledgers {
        total += l.fair_first_round(now_unix)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &'static [(u32, &'static str)]) -> Sorted<'static, u32, &'static str> {
        Box::new(rows.iter().copied().map(Ok))
    }

    #[test]
    fn merge_groups_equal_keys_of_every_stream_in_key_order() {
        let mut seen = Vec::new();
        merge_sorted(
            vec![
                stream(&[(1, "a1"), (3, "a3"), (3, "a3'")]),
                stream(&[]),
                stream(&[(2, "c2"), (3, "c3"), (9, "c9")]),
            ],
            |k, rows| {
                seen.push((k, rows));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            [
                (1, vec![(0, "a1")]),
                (2, vec![(2, "c2")]),
                (3, vec![(0, "a3"), (0, "a3'"), (2, "c3")]),
                (9, vec![(2, "c9")]),
            ]
        );
    }
}
