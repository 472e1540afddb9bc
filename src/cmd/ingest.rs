//! `spoolreplay ingest SPOOL`: read a spool into the ledger.

use anyhow::Result;

use crate::config::{IngestConfig, Output};
use crate::exit::{Exit, Failure};
use crate::ingest;
use crate::ledger::Ledger;
use crate::report::Printer;
use crate::report::event::Event;
use crate::report::progress::Progress;
use crate::sanitize::for_terminal;
use crate::shutdown::Shutdown;
use crate::spool::{self, HashRule, Selection, SpoolError};

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

    let mut progress = Progress::new(&output, "items", 0);
    let tally = ingest::ingest(&mut ledger, reader, hash_rule, &shutdown, |count, fresh| {
        for q in fresh {
            printer.warn(&format!(
                "quarantined {}: {}",
                for_terminal(&q.source.to_string()),
                for_terminal(&q.reason)
            ));
            printer.event(&Event::quarantined_item(q))?;
        }
        progress.add(count as u64, "");
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
