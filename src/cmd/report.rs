//! `spoolreplay report`: the dry run. Reads the ledger, classifies against the incident,
//! prints the plan (as a table, JSON Lines or CSV), optionally writes the HTML incident
//! report; with `--affected`, lists the affected mailboxes and the sender domains that were
//! sent bounces instead. Writes nothing to the ledger.
//!
//! Given several ledgers (one per MX host, or per shard of a spool) it reports on them as
//! one: the plan is built from every ledger's rows in turn, counts that add are added, and
//! what does not add (duplicate content, mailboxes and senders found in several ledgers)
//! is merged by `ledger::combined`.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{Output, ReportConfig};
use crate::exit::{Exit, Failure};
use crate::ledger::{Ledger, QuarantineRow, combined, describe_shard};
use crate::plan::{Plan, mass_bounce};
use crate::report::Printer;
use crate::report::affected::{
    heading, mailbox_line, mailbox_sheet, sender_domain_line, sender_domain_sheet,
};
use crate::report::html::{self, DELAY_BUCKETS, HtmlReport};
use crate::report::page;
use crate::report::sections::{Facts, LedgerLine, PlanReport, ledgers_section, write_plan};
use crate::report::sheet::{Format, Sink, Tracked};
use crate::sanitize::for_terminal;

pub fn run(output: Output, cfg: ReportConfig) -> Result<Exit> {
    let printer = Printer::new(output);
    let ledgers = combined::open_all(&cfg.ledgers)?;
    let mut out = Tracked::new(BufWriter::new(std::io::stdout().lock()));
    if cfg.affected {
        affected(&ledgers, cfg.format, &mut out)?;
        out.flush()?;
        return Ok(Exit::Done);
    }
    let Some(inc) = cfg.incident.as_ref() else {
        return Err(anyhow::Error::new(Failure::new(
            Exit::Usage,
            "--incident: the plan needs the incident file",
        )));
    };
    let mut plan = Plan::default();
    for ledger in &ledgers {
        ledger.for_each_message(|m, r| {
            plan.add_judged(inc, cfg.now, m, r, |m| {
                crate::bounce::policy_verdict(inc, m)
            });
            Ok(())
        })?;
    }
    if cfg.order == crate::ledger::DeliveryOrder::Fair {
        plan.first_round = Some(combined::fair_first_round(&ledgers, cfg.now.timestamp())?);
    }
    let facts = read_facts(&ledgers, cfg.top)?;
    // The mass-bounce guard `run` applies, so the dry run warns about what `run` refuses.
    let guard = mass_bounce(&plan, inc, cfg.now, cfg.fixed_clock, cfg.max_bounce_share);
    // The table says it on stdout; JSON and CSV readers get it on stderr too.
    if let (Some(m), false) = (&guard, cfg.format == Format::Table) {
        printer.warn(&format!("`run` would refuse this plan (exit 78): {m}"));
    }
    let report = PlanReport {
        incident: inc,
        plan: &plan,
        facts: &facts,
        now: cfg.now,
        pace: cfg.pace,
        top: cfg.top,
        order: cfg.order,
        mass_bounce: guard,
    };
    write_plan(&mut out, cfg.format, &report).context(WRITE)?;
    out.flush()?;
    if let Some(path) = &cfg.html {
        let page = html::render(&html_report(&ledgers, &report)?);
        write_html(path, &page)?;
        printer.note(&format!(
            "wrote the HTML report to `{}`",
            for_terminal(&path.display().to_string())
        ));
    }
    Ok(Exit::Done)
}

/// What the plan shows besides the plan itself, read from the ledgers.
fn read_facts(ledgers: &[Ledger], top: usize) -> Result<Facts> {
    let [ledger] = ledgers else {
        return Ok(Facts {
            quarantine: quarantine_across(ledgers, top)?,
            duplicates: combined::duplicates(ledgers, top)?,
            combined: ledger_lines(ledgers)?,
        });
    };
    Ok(Facts {
        quarantine: ledger.quarantined(top)?,
        duplicates: ledger.duplicates(top)?,
        combined: Vec::new(),
    })
}

/// Open quarantine items of every ledger: the total, and the `top` seen first.
fn quarantine_across(ledgers: &[Ledger], top: usize) -> Result<(u64, Vec<QuarantineRow>)> {
    let (mut total, mut rows) = (0, Vec::new());
    for ledger in ledgers {
        let (n, first) = ledger.quarantined(top)?;
        total += n;
        rows.extend(first);
    }
    rows.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
    rows.truncate(top);
    Ok((total, rows))
}

fn ledger_lines(ledgers: &[Ledger]) -> Result<Vec<LedgerLine>> {
    ledgers
        .iter()
        .map(|l| {
            Ok(LedgerLine {
                path: l.path().display().to_string(),
                shard: describe_shard(l.shard()?),
                messages: l.message_count()?,
            })
        })
        .collect()
}

/// What a failed write to stdout is said as.
const WRITE: &str = "cannot write the report";

/// `--affected`: one row per affected mailbox, then one per sender domain sent bounces.
fn affected(ledgers: &[Ledger], f: Format, out: &mut dyn Sink) -> Result<()> {
    let [ledger] = ledgers else {
        return affected_across(ledgers, f, out);
    };
    heading(out, f, &format!("`{}`", ledger.path().display()))?;
    let mut w = mailbox_sheet(out, f).context(WRITE)?;
    ledger.for_each_affected_mailbox(|m| mailbox_line(&mut w, m).context(WRITE))?;
    w.finish()?;
    let mut w = sender_domain_sheet(out, f).context(WRITE)?;
    ledger.for_each_bounced_sender_domain(|d| sender_domain_line(&mut w, d).context(WRITE))?;
    w.finish()?;
    Ok(())
}

/// `--affected` over several ledgers: a mailbox (or sender) found in several is one row.
fn affected_across(ledgers: &[Ledger], f: Format, out: &mut dyn Sink) -> Result<()> {
    let lines = ledger_lines(ledgers)?;
    heading(out, f, &format!("{} ledgers", lines.len()))?;
    ledgers_section(out, f, &lines)?;
    let mut w = mailbox_sheet(out, f).context(WRITE)?;
    combined::for_each_affected_mailbox(ledgers, |m| mailbox_line(&mut w, m).context(WRITE))?;
    w.finish()?;
    let mut w = sender_domain_sheet(out, f).context(WRITE)?;
    for d in combined::bounced_sender_domains(ledgers)? {
        sender_domain_line(&mut w, &d)?;
    }
    w.finish()?;
    Ok(())
}

/// The HTML report's content: the plan's, and two more reads of the ledgers.
fn html_report<'a>(ledgers: &[Ledger], r: &PlanReport<'a>) -> Result<HtmlReport<'a>> {
    let mut delays = [0u64; DELAY_BUCKETS];
    for ledger in ledgers {
        ledger.for_each_delivery_delay(|d| delays[html::delay_bucket(d)] += 1)?;
    }
    let counts = match ledgers {
        [ledger] => ledger.domain_state_counts()?,
        _ => combined::domain_state_counts(ledgers)?,
    };
    Ok(page::assemble(r, delays, counts))
}

/// Writes the page next to its final name and renames it, so a reader never sees half.
fn write_html(path: &Path, page: &str) -> Result<()> {
    let tmp = path.with_extension("html.tmp");
    let cant = |e: std::io::Error| {
        anyhow::Error::new(e).context(Failure::new(
            Exit::CantCreate,
            format!("cannot write the HTML report `{}`", path.display()),
        ))
    };
    std::fs::write(&tmp, page).map_err(cant)?;
    std::fs::rename(&tmp, path).map_err(cant)
}
