//! `spoolreplay ingest SPOOL`: read a spool into the ledger.

use std::sync::mpsc::SyncSender;

use anyhow::Result;

use crate::config::{IngestConfig, Output};
use crate::exit::{Exit, Failure};
use crate::ledger::{self, Inserted, Ledger};
use crate::report::Printer;
use crate::report::event::Event;
use crate::report::progress::Progress;
use crate::sanitize::for_terminal;
use crate::shutdown::Shutdown;
use crate::spool::{
    self, ContentHash, HashRule, Quarantined, QueuedMessage, Selection, SpoolError, SpoolItem,
};

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

#[derive(Debug, Default)]
struct Tally {
    messages: u64,
    new: u64,
    known: u64,
    recipients: u64,
    quarantined: u64,
    new_quarantined: u64,
}

pub fn run(ledger_path: &std::path::Path, output: Output, cfg: IngestConfig) -> Result<Exit> {
    let printer = Printer::new(output);
    let root = std::fs::canonicalize(&cfg.spool).map_err(|e| {
        let exit = if e.kind() == std::io::ErrorKind::NotFound {
            Exit::NoInput
        } else {
            Exit::IoErr
        };
        anyhow::Error::new(e).context(Failure::new(
            exit,
            format!("cannot open spool `{}`", cfg.spool.display()),
        ))
    })?;
    let selection = cfg.shard.map_or_else(Selection::all, Selection::shard);
    let (format, reader) =
        spool::open_selected(&root, cfg.format, selection.clone()).map_err(spool_failure)?;
    let mut ledger = Ledger::open_for_write(ledger_path, "ingest")?;
    ledger.claim_shard(cfg.shard)?;
    let hash_rule = ledger.claim_hash_rule()?;
    if hash_rule == HashRule::Bytes {
        printer.note(
            "this ledger was made by an earlier spoolreplay and keeps its content hashes of \
             the bytes as read: copies that differ only in line ends count as two messages",
        );
    }
    ledger.checkpoint_in_large_steps()?;
    let deferred_indexes = ledger.defer_lookup_indexes()?;
    let shutdown = Shutdown::install("committing what was read")?;
    printer.note(&format!(
        "reading {format} spool `{}`{}",
        for_terminal(&root.display().to_string()),
        cfg.shard
            .map(|s| format!(", shard {s}"))
            .unwrap_or_default()
    ));

    let mut tally = Tally::default();
    let mut progress = Progress::new(&output, "items", 0);
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
            for q in &fresh {
                printer.warn(&format!(
                    "quarantined {}: {}",
                    for_terminal(&q.source.to_string()),
                    for_terminal(&q.reason)
                ));
                printer.event(&Event::quarantined_item(q))?;
            }
            progress.add(count as u64, "");
        }
        Ok(())
    })?;
    progress.finish();
    if deferred_indexes {
        printer.note("indexing mailboxes and senders");
        ledger.ensure_lookup_indexes()?;
    }

    let signal = shutdown.signal();
    let exit = signal.map_or(Exit::Done, |s| s.exit());
    let printed = (|| -> std::io::Result<()> {
        printer.event(&Event::IngestSummary {
            spool: root.to_string_lossy(),
            format: format.as_str(),
            ledger: ledger.path().to_string_lossy(),
            messages: tally.messages,
            new: tally.new,
            known: tally.known,
            recipients: tally.recipients,
            quarantined: tally.quarantined,
            new_quarantined: tally.new_quarantined,
            shard: cfg.shard.map(|s| s.to_string()),
            other_shards: selection.skipped(),
            stopped: signal.map(|s| s.name()),
            exit: exit.code(),
        })?;
        printer.summary(&format!(
            "ingested {} messages from `{}`: {} new ({} recipients), {} already in the ledger; {} quarantined ({} new)",
            tally.messages,
            for_terminal(&root.display().to_string()),
            tally.new,
            tally.recipients,
            tally.known,
            tally.quarantined,
            tally.new_quarantined
        ))?;
        if let Some(shard) = cfg.shard {
            printer.summary(&format!(
                "took shard {shard}: {} items left to the other shards",
                selection.skipped()
            ))?;
        }
        if let Some(signal) = signal {
            printer.summary(&format!(
                "Stopped early: {} received; what was read is committed. Run the same ingest \
                 again to read the rest (items already in the ledger are recognised)\nExit {}: {}",
                signal.name(),
                exit.code(),
                exit.meaning()
            ))?;
        }
        Ok(())
    })();
    // After a signal, output may be gone (SIGHUP): the ledger and the exit code matter
    // then, not whether the summary could be printed.
    if signal.is_none() {
        printed?;
    }
    Ok(exit)
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

fn spool_failure(e: SpoolError) -> anyhow::Error {
    let hint = "pass --format postfix|exim|maildir|mbox|eml if detection guessed wrong";
    match e {
        SpoolError::Io { path, source } => anyhow::Error::new(source).context(Failure::new(
            Exit::IoErr,
            format!("cannot read spool `{}`", path.display()),
        )),
        SpoolError::Missing(_) => anyhow::Error::new(Failure::new(Exit::NoInput, e.to_string())),
        SpoolError::Unrecognized { .. } => {
            anyhow::Error::new(Failure::new(Exit::DataErr, e.to_string()).with_hint(hint))
        }
    }
}
