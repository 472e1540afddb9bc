//! The ingest pipeline: a reader thread reads, parses and hashes spool items while the
//! calling thread writes them to the ledger in large commits.

use std::sync::mpsc::SyncSender;

use anyhow::Result;

use crate::ledger::{self, Inserted, Ledger};
use crate::shutdown::Shutdown;
use crate::spool::{ContentHash, HashRule, Quarantined, QueuedMessage, SpoolItem};

/// Items per ledger transaction: big enough to be fast, small enough that a crash loses
/// little work (ingest is idempotent, so lost work is only redone, at about 10k items a
/// second). Each commit rewrites every index page it touched; with random-key indexes
/// that is most of them, so fewer, larger commits write far less (300k messages: 1,000
/// per commit 28.9 s, 10,000 per commit 23.4 s). Much larger transactions spill SQLite's
/// page cache mid-transaction and get slower again (50,000: 28.6 s).
const ITEMS_PER_COMMIT: usize = 10_000;
/// ... or this many message bytes, whichever comes first: the ledger does not store
/// bodies, so this only bounds how much is read again after a crash.
const BYTES_PER_COMMIT: usize = 512 << 20;
/// Hand-overs read ahead of the ledger writer.
const READ_AHEAD: usize = 4;
/// Items per hand-over from the reader thread to the writer, or this many message bytes:
/// one hand-over per message cost a futex wake-up per message (8% of ingest's CPU), while
/// a few hand-overs of bounded size keep memory a few megabytes deep.
const ITEMS_PER_HANDOVER: usize = 64;
const BYTES_PER_HANDOVER: usize = 1 << 20;

/// An item from the spool; a message comes with its content hash.
enum Read {
    Message(Box<QueuedMessage>, ContentHash),
    Quarantined(Quarantined),
}

/// What one ingest read and what the ledger made of it.
#[derive(Debug, Default)]
pub struct Tally {
    pub messages: u64,
    pub new: u64,
    pub known: u64,
    pub recipients: u64,
    pub quarantined: u64,
    pub new_quarantined: u64,
}

/// Reads `reader` into `ledger` until it ends or `shutdown` is requested. After each
/// commit, `committed` gets the number of items it held and the quarantined items that
/// were new to the ledger (for progress and warnings: they are durable by then).
pub fn ingest(
    ledger: &mut Ledger,
    reader: impl Iterator<Item = SpoolItem> + Send,
    hash_rule: HashRule,
    shutdown: &Shutdown,
    mut committed: impl FnMut(usize, &[Quarantined]) -> Result<()>,
) -> Result<Tally> {
    let mut tally = Tally::default();
    // Reading, parsing and hashing run on their own thread while this one writes the
    // ledger; the channel holds a few hand-overs of at most 64 items or about 1 MB, so
    // memory stays a few megabytes deep.
    let (items_tx, items_rx) = std::sync::mpsc::sync_channel::<Vec<Read>>(READ_AHEAD);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || read_ahead(reader, hash_rule, &items_tx));
        // The receiver is moved in, so it is dropped when this closure returns (done, an
        // error, a signal): a reader blocked on a full channel then sees the send fail
        // and ends, instead of the scope waiting for it forever.
        let mut items = items_rx.into_iter().flatten().peekable();
        let items_per_commit = items_per_commit();
        while !shutdown.requested() && items.peek().is_some() {
            let now = ledger::timestamp();
            // One transaction per chunk, items consumed one at a time.
            let (count, fresh) = ledger.write(|tx| {
                let (mut count, mut bytes, mut fresh) = (0usize, 0usize, Vec::new());
                while count < items_per_commit && bytes < BYTES_PER_COMMIT && !shutdown.requested()
                {
                    let Some(read) = items.next() else { break };
                    count += 1;
                    match read {
                        Read::Message(m, hash) => {
                            tally.messages += 1;
                            bytes += m.content.len();
                            match tx.insert_message(&m, &hash, &now)? {
                                Inserted::New => {
                                    tally.new += 1;
                                    tally.recipients += m.envelope.recipients.len() as u64;
                                }
                                Inserted::Known => tally.known += 1,
                            }
                        }
                        Read::Quarantined(q) => {
                            tally.quarantined += 1;
                            if tx.insert_quarantine(&q, &now)? {
                                tally.new_quarantined += 1;
                                fresh.push(q);
                            }
                        }
                    }
                }
                Ok((count, fresh))
            })?;
            committed(count, &fresh)?;
        }
        Ok(())
    })?;
    Ok(tally)
}

/// `ITEMS_PER_COMMIT`, or `SPOOLREPLAY_TEST_COMMIT_ITEMS` (a test hook, like
/// `SPOOLREPLAY_CRASH_AT`): the kill -9 drill uses small commits so that its kills land
/// between commits of a small spool, not only inside the first.
fn items_per_commit() -> usize {
    std::env::var("SPOOLREPLAY_TEST_COMMIT_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ITEMS_PER_COMMIT)
}

/// The reader thread: reads, parses and hashes, handing items over in small chunks.
fn read_ahead(
    reader: impl Iterator<Item = SpoolItem>,
    rule: HashRule,
    items: &SyncSender<Vec<Read>>,
) {
    let mut chunk = Vec::with_capacity(ITEMS_PER_HANDOVER);
    let mut bytes = 0;
    for item in reader {
        let read = match item {
            SpoolItem::Message(mut m) => {
                bytes += m.content.len();
                let hash = m.identify(rule);
                Read::Message(Box::new(m), hash)
            }
            SpoolItem::Quarantined(q) => Read::Quarantined(q),
        };
        chunk.push(read);
        if chunk.len() >= ITEMS_PER_HANDOVER || bytes >= BYTES_PER_HANDOVER {
            bytes = 0;
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(ITEMS_PER_HANDOVER));
            if items.send(full).is_err() {
                return; // the writer stopped (an error): nothing left to do
            }
        }
    }
    if !chunk.is_empty() {
        let _ = items.send(chunk);
    }
}
