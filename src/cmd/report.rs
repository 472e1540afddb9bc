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
use serde_json::json;

use crate::classify::ALL_DISPOSITIONS;
use crate::config::{Output, ReportConfig};
use crate::exit::{Exit, Failure};
use crate::incident::Incident;
use crate::ledger::DeliveryOrder;
use crate::ledger::queries::{DuplicateGroup, MailboxRow, SenderDomainRow};
use crate::ledger::{Ledger, QuarantineRow, RcptState, combined, describe_shard};
use crate::plan::{
    MASS_BOUNCE_HINT, MassBounce, OUTSIDE_INDEX, Plan, age_labels, mass_bounce, projected_duration,
};
use crate::report::html::{self, AnomalyLine, DELAY_BUCKETS, DomainOutcomes, HtmlReport};
use crate::report::sheet::{Cell, Format, SheetWriter, Sink, Tracked};
use crate::report::{Printer, json as events, order};
use crate::sanitize::for_terminal;
use crate::throttle::{RateSpec, format_duration};

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
    if cfg.order == DeliveryOrder::Fair {
        plan.first_round = Some(combined::fair_first_round(&ledgers, cfg.now.timestamp())?);
    }
    let facts = Facts::read(&ledgers, cfg.top)?;
    // The table says it on stdout; JSON and CSV readers get it on stderr too.
    if let (Some(m), false) = (guard(&cfg, inc, &plan), cfg.format == Format::Table) {
        printer.warn(&format!("`run` would refuse this plan (exit 78): {m}"));
    }
    write_plan(&mut out, &cfg, inc, &plan, &facts)?;
    out.flush()?;
    if let Some(path) = &cfg.html {
        let page = html::render(&html_report(&ledgers, &cfg, inc, &plan, &facts)?);
        write_html(path, &page)?;
        printer.note(&format!(
            "wrote the HTML report to `{}`",
            for_terminal(&path.display().to_string())
        ));
    }
    Ok(Exit::Done)
}

/// What the chosen `--order` means for the plan's deliveries (`plan::order_milestones`).
fn milestones(cfg: &ReportConfig, plan: &Plan) -> Vec<crate::plan::Milestone> {
    match &cfg.incident {
        Some(inc) => crate::plan::order_milestones(plan, inc, cfg.order, &cfg.pace),
        None => Vec::new(),
    }
}

/// The mass-bounce guard `run` applies, so the dry run warns about what `run` refuses.
fn guard(cfg: &ReportConfig, inc: &Incident, plan: &Plan) -> Option<MassBounce> {
    mass_bounce(plan, inc, cfg.now, cfg.fixed_clock, cfg.max_bounce_share)
}

/// What the plan shows besides the plan itself, read from the ledger.
struct Facts {
    /// Open quarantine items: total, and the first `--top`.
    quarantine: (u64, Vec<QuarantineRow>),
    /// Duplicate groups, extra copies, and the first `--top` groups.
    duplicates: (u64, u64, Vec<DuplicateGroup>),
    /// The ledgers combined, when more than one: path, shard, messages.
    combined: Vec<LedgerLine>,
}

/// One of several combined ledgers, as the report names it.
struct LedgerLine {
    path: String,
    shard: String,
    messages: u64,
}

impl Facts {
    fn read(ledgers: &[Ledger], top: usize) -> Result<Facts> {
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

/// The ledgers a combined report read (nothing for one ledger, whose report is unchanged).
fn ledgers_section(out: &mut dyn Sink, f: Format, lines: &[LedgerLine]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut w = SheetWriter::begin(
        out,
        f,
        "ledger",
        "Combined ledgers",
        &["ledger", "shard", "messages"],
    )?;
    for l in lines {
        w.row(vec![
            Cell::text(l.path.as_str()),
            Cell::text(l.shard.as_str()),
            Cell::Count(l.messages),
        ])?;
    }
    w.finish()?;
    Ok(())
}

fn write_plan(
    out: &mut dyn Sink,
    cfg: &ReportConfig,
    inc: &Incident,
    plan: &Plan,
    facts: &Facts,
) -> Result<()> {
    let f = cfg.format;
    if f == Format::Table {
        let source = match facts.combined.len() {
            0 => "the ledger".to_string(),
            n => format!("{n} ledgers"),
        };
        writeln!(
            out,
            "Plan for \"{}\" at {} ({} messages in {source})",
            for_terminal(&inc.name),
            cfg.now.to_rfc3339(),
            plan.messages
        )?;
        if let Some(m) = guard(cfg, inc, plan) {
            writeln!(
                out,
                "\nWARNING: `run` would refuse this plan (exit 78): {m}\n  hint: {MASS_BOUNCE_HINT}"
            )?;
        }
    }
    ledgers_section(out, f, &facts.combined)?;
    let mut w = SheetWriter::begin(
        out,
        f,
        "plan",
        "Per window and disposition (open recipients)",
        &[
            "window",
            "action",
            "disposition",
            "messages",
            "recipients",
            "bytes",
        ],
    )?;
    for ((win, d), c) in &plan.by_window {
        w.row(vec![
            Cell::text(window_name(inc, *win)),
            Cell::text(window_action(inc, *win)),
            Cell::text(d.as_str()),
            Cell::Count(c.messages),
            Cell::Count(c.recipients),
            Cell::Bytes(c.bytes),
        ])?;
    }
    w.finish()?;
    if f == Format::Table {
        summary_prose(out, cfg, plan)?;
    }

    let mut w = SheetWriter::begin(
        out,
        f,
        "domain",
        "Top recipient domains (open recipients)",
        &["domain", "recipients", "deliver", "bounce", "hold", "drop"],
    )?;
    for (d, c) in plan.top_domains(cfg.top) {
        w.row(vec![
            Cell::text(d),
            Cell::Count(c.recipients),
            Cell::Count(c.deliver),
            Cell::Count(c.bounce),
            Cell::Count(c.hold),
            Cell::Count(c.drop),
        ])?;
    }
    w.finish()?;

    let labels = age_labels();
    let mut columns = vec!["domain", "total"];
    columns.extend(labels.iter().map(String::as_str));
    let mut w = SheetWriter::begin(
        out,
        f,
        "age",
        &format!(
            "Age of open mail at {} per domain, in minutes (as Postfix qshape: 5m = under 5 minutes)",
            cfg.now.to_rfc3339()
        ),
        &columns,
    )?;
    let age_row = |name: &str, total: u64, ages: &[u64]| {
        let mut row = vec![Cell::text(name), Cell::Count(total)];
        row.extend(ages.iter().map(|n| Cell::Count(*n)));
        row
    };
    let totals = plan.total_ages();
    if totals.iter().sum::<u64>() > 0 {
        w.row(age_row("TOTAL", totals.iter().sum(), &totals))?;
    }
    for (d, c) in plan.top_domains(cfg.top) {
        w.row(age_row(d, c.recipients, &c.ages))?;
    }
    w.finish()?;

    let mut w = SheetWriter::begin(
        out,
        f,
        "arrivals",
        &format!("Arrivals per hour ({})", inc.restored_at.offset()),
        &["hour", "window", "messages"],
    )?;
    for ((hour, win), n) in &plan.arrivals {
        let hour = match f {
            Format::Table => hour.format("%Y-%m-%d %H:00").to_string(),
            _ => hour.to_rfc3339(),
        };
        w.row(vec![
            Cell::Text(hour),
            Cell::text(window_name(inc, *win)),
            Cell::Count(*n),
        ])?;
    }
    w.finish()?;

    let mut w = SheetWriter::begin(
        out,
        f,
        "anomaly",
        "Anomalies (all messages, settled or not)",
        &["kind", "window", "messages", "examples"],
    )?;
    for a in anomalies(inc, plan, facts) {
        w.row(vec![
            Cell::text(a.kind),
            Cell::MaybeText(a.window),
            Cell::Count(a.messages),
            Cell::Text(a.examples.join(" ")),
        ])?;
    }
    w.finish()?;

    bounce_policy_section(out, f, cfg, inc, plan)?;
    quarantine_section(out, f, facts)?;
    projection_section(out, f, cfg, plan)?;
    order::section(out, f, cfg.order, &milestones(cfg, plan))?;
    match f {
        Format::Json => {
            serde_json::to_writer(&mut *out, &summary_event(cfg, inc, plan, facts))?;
            out.write_all(b"\n")?;
        }
        Format::Csv => summary_csv(out, cfg, inc, plan, facts)?,
        Format::Table => {}
    }
    Ok(())
}

/// What the `[bounces]` policy does with the failure DSNs owed, per window and per sender
/// domain (the top sender domains by DSNs they would receive).
fn bounce_policy_section(
    out: &mut dyn Sink,
    f: Format,
    cfg: &ReportConfig,
    inc: &Incident,
    plan: &Plan,
) -> Result<()> {
    let columns = ["dsns", "suppressed_unauthenticated", "suppressed_spam"];
    let counts = |c: &crate::plan::PolicyCounts| {
        vec![
            Cell::Count(c.dsns),
            Cell::Count(c.unauthenticated),
            Cell::Count(c.spam),
        ]
    };
    let mut head = vec!["window"];
    head.extend(columns);
    let title = format!(
        "Failure DSNs under the bounce policy (require = {}, spam = {}), per window",
        inc.bounces.require.as_str(),
        match inc.bounces.spam {
            crate::bounce_policy::Spam::Bounce => "bounce",
            crate::bounce_policy::Spam::Suppress => "suppress",
        }
    );
    let mut w = SheetWriter::begin(out, f, "bounce_policy", &title, &head)?;
    for (win, c) in &plan.policy_by_window {
        let mut row = vec![Cell::text(window_name(inc, *win))];
        row.extend(counts(c));
        w.row(row)?;
    }
    w.finish()?;
    let mut head = vec!["sender_domain"];
    head.extend(columns);
    let mut w = SheetWriter::begin(
        out,
        f,
        "dsn_sender_domain",
        "Top sender domains that would receive failure DSNs",
        &head,
    )?;
    for (d, c) in plan.top_sender_domains(cfg.top) {
        let mut row = vec![Cell::text(d)];
        row.extend(counts(&c));
        w.row(row)?;
    }
    w.finish()?;
    Ok(())
}

/// The lines under the plan table: DSNs, deliveries and their projected duration, the
/// oldest and newest arrival, recipients per state.
fn summary_prose(out: &mut dyn Sink, cfg: &ReportConfig, plan: &Plan) -> Result<()> {
    if plan.by_window.is_empty() {
        writeln!(out, "Nothing left to do: every recipient is settled.")?;
    }
    writeln!(
        out,
        "\nDSNs for expired and bounced mail: {} (to {} distinct senders); refusals by the store may add more",
        plan.dsns,
        plan.dsn_senders.len()
    )?;
    write!(out, "Messages that would be delivered: {}", plan.deliveries)?;
    match plan.projected(&cfg.pace) {
        Some(d) => writeln!(
            out,
            ", taking at least {} at {} (batches of {}, pause {})",
            format_duration(d),
            cfg.pace.rate.map(|r| r.to_string()).unwrap_or_default(),
            cfg.pace.batch_size,
            format_duration(cfg.pace.pause)
        )?,
        None => writeln!(
            out,
            " (unthrottled: as fast as the store takes them; pass --rate N/s for a projection)"
        )?,
    }
    for (rate, d) in what_if(cfg, plan) {
        writeln!(out, "  at {rate}: {}", format_duration(d))?;
    }
    order::prose(out, cfg.order, &milestones(cfg, plan))?;
    if let (Some(o), Some(n)) = (plan.oldest, plan.newest) {
        writeln!(
            out,
            "Oldest arrival: {}\nNewest arrival: {}",
            o.to_rfc3339(),
            n.to_rfc3339()
        )?;
    }
    let states: Vec<String> = plan
        .states
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    writeln!(
        out,
        "Recipients by state now: {}",
        if states.is_empty() {
            "none".into()
        } else {
            states.join(", ")
        }
    )?;
    Ok(())
}

/// Mail outside every window, mail where none was expected, and duplicate content.
fn anomalies(inc: &Incident, plan: &Plan, facts: &Facts) -> Vec<AnomalyLine> {
    let mut out = Vec::new();
    if plan.outside.messages > 0 {
        out.push(AnomalyLine {
            kind: "outside".into(),
            window: Some(crate::classify::OUTSIDE.into()),
            messages: plan.outside.messages,
            examples: plan.outside.examples.clone(),
        });
    }
    for (w, a) in &plan.unexpected {
        out.push(AnomalyLine {
            kind: "unexpected".into(),
            window: Some(inc.windows[*w].name.clone()),
            messages: a.messages,
            examples: a.examples.clone(),
        });
    }
    for g in &facts.duplicates.2 {
        out.push(AnomalyLine {
            kind: "duplicate".into(),
            window: None,
            messages: g.queue_ids.len() as u64,
            examples: g.queue_ids.clone(),
        });
    }
    out
}

fn quarantine_section(out: &mut dyn Sink, f: Format, facts: &Facts) -> Result<()> {
    let (total, rows) = &facts.quarantine;
    if f == Format::Table {
        // A list, not a padded table: spool paths are long and vary by machine.
        writeln!(out, "\nQuarantined items: {total}")?;
        for q in rows {
            writeln!(
                out,
                "  {}{}: {}",
                for_terminal(&q.source_path),
                if q.source_format == "mbox" {
                    format!(" (byte {})", q.source_offset)
                } else {
                    String::new()
                },
                for_terminal(&q.reason)
            )?;
        }
        if *total > rows.len() as u64 {
            writeln!(
                out,
                "  … and {} more (--top N shows more)",
                total - rows.len() as u64
            )?;
        }
        return Ok(());
    }
    if f == Format::Json {
        for q in rows {
            serde_json::to_writer(&mut *out, &events::quarantined(q))?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    let mut w = SheetWriter::begin(
        out,
        f,
        "quarantined",
        "Quarantined items",
        &["format", "path", "offset", "reason", "first_seen"],
    )?;
    for q in rows {
        w.row(vec![
            Cell::text(q.source_format.as_str()),
            Cell::text(q.source_path.as_str()),
            Cell::Count(q.source_offset.max(0) as u64),
            Cell::text(q.reason.as_str()),
            Cell::text(q.first_seen.as_str()),
        ])?;
    }
    w.finish()?;
    Ok(())
}

/// The projection as rows (JSON and CSV; the table says it in prose): the chosen pace
/// first, then the what-if rates.
fn projection_section(
    out: &mut dyn Sink,
    f: Format,
    cfg: &ReportConfig,
    plan: &Plan,
) -> Result<()> {
    if f == Format::Table {
        return Ok(());
    }
    let mut w = SheetWriter::begin(
        out,
        f,
        "projection",
        "Projected duration",
        &["rate", "selected", "messages", "seconds"],
    )?;
    w.row(vec![
        Cell::MaybeText(cfg.pace.rate.map(|r| r.to_string())),
        Cell::text("yes"),
        Cell::Count(plan.deliveries),
        Cell::Duration(plan.projected(&cfg.pace)),
    ])?;
    for (rate, d) in what_if(cfg, plan) {
        w.row(vec![
            Cell::Text(rate.to_string()),
            Cell::text("no"),
            Cell::Count(plan.deliveries),
            Cell::Duration(Some(d)),
        ])?;
    }
    w.finish()?;
    Ok(())
}

fn summary_event(
    cfg: &ReportConfig,
    inc: &Incident,
    plan: &Plan,
    facts: &Facts,
) -> serde_json::Value {
    let states: serde_json::Map<String, serde_json::Value> = plan
        .states
        .iter()
        .map(|(s, n)| (s.as_str().to_string(), json!(n)))
        .collect();
    let dispositions: serde_json::Map<String, serde_json::Value> = ALL_DISPOSITIONS
        .iter()
        .map(|d| {
            let n: u64 = plan
                .by_window
                .iter()
                .filter(|((_, x), _)| x == d)
                .map(|(_, c)| c.messages)
                .sum();
            (d.as_str().to_string(), json!(n))
        })
        .collect();
    let mut summary = json!({
        "type": "report_summary",
        "incident": inc.name,
        "now": cfg.now.to_rfc3339(),
        "messages": plan.messages,
        "dispositions": dispositions,
        "states": states,
        "deliveries": plan.deliveries,
        "dsns": plan.dsns,
        "dsn_senders": plan.dsn_senders.len(),
        "dsns_suppressed_unauthenticated": plan.policy_totals().unauthenticated,
        "dsns_suppressed_spam": plan.policy_totals().spam,
        "projected_seconds": plan.projected(&cfg.pace).map(|d| d.as_secs_f64()),
        "order": order::name(cfg.order),
        "oldest": plan.oldest.map(|t| t.to_rfc3339()),
        "newest": plan.newest.map(|t| t.to_rfc3339()),
        "quarantined": facts.quarantine.0,
        "outside": plan.outside.messages,
        "unexpected": plan.unexpected.values().map(|a| a.messages).sum::<u64>(),
        "duplicates": facts.duplicates.1,
        "mass_bounce": guard(cfg, inc, plan).as_ref().map(events::mass_bounce),
    });
    if !facts.combined.is_empty() {
        let paths: Vec<&str> = facts.combined.iter().map(|l| l.path.as_str()).collect();
        summary["ledgers"] = json!(paths);
    }
    summary
}

/// The summary as `key,value` rows.
fn summary_csv(
    out: &mut dyn Sink,
    cfg: &ReportConfig,
    inc: &Incident,
    plan: &Plan,
    facts: &Facts,
) -> Result<()> {
    let mut w = SheetWriter::begin(out, Format::Csv, "summary", "", &["key", "value"])?;
    let mut kv = |k: &str, v: Cell| w.row(vec![Cell::text(k), v]);
    kv("incident", Cell::text(inc.name.as_str()))?;
    kv("now", Cell::Text(cfg.now.to_rfc3339()))?;
    kv("messages", Cell::Count(plan.messages))?;
    kv("deliveries", Cell::Count(plan.deliveries))?;
    kv("dsns", Cell::Count(plan.dsns))?;
    kv("dsn_senders", Cell::Count(plan.dsn_senders.len() as u64))?;
    kv(
        "dsns_suppressed_unauthenticated",
        Cell::Count(plan.policy_totals().unauthenticated),
    )?;
    kv(
        "dsns_suppressed_spam",
        Cell::Count(plan.policy_totals().spam),
    )?;
    kv(
        "oldest",
        Cell::MaybeText(plan.oldest.map(|t| t.to_rfc3339())),
    )?;
    kv(
        "newest",
        Cell::MaybeText(plan.newest.map(|t| t.to_rfc3339())),
    )?;
    kv("quarantined", Cell::Count(facts.quarantine.0))?;
    kv("outside", Cell::Count(plan.outside.messages))?;
    kv(
        "unexpected",
        Cell::Count(plan.unexpected.values().map(|a| a.messages).sum()),
    )?;
    kv("duplicates", Cell::Count(facts.duplicates.1))?;
    for (s, n) in &plan.states {
        kv(&format!("state_{}", s.as_str()), Cell::Count(*n))?;
    }
    w.finish()?;
    Ok(())
}

/// A few other rates to compare, around the chosen one (or common ones when unthrottled),
/// with the time each would take.
fn what_if(cfg: &ReportConfig, plan: &Plan) -> Vec<(RateSpec, std::time::Duration)> {
    ["50/s", "200/s", "1000/s"]
        .iter()
        .filter_map(|s| s.parse::<RateSpec>().ok())
        .filter(|r| Some(*r) != cfg.pace.rate)
        .filter_map(|rate| {
            let mut pace = cfg.pace;
            pace.rate = Some(rate);
            projected_duration(plan.deliveries, &pace).map(|d| (rate, d))
        })
        .collect()
}

/// `--affected`: one row per affected mailbox, then one per sender domain sent bounces.
fn affected(ledgers: &[Ledger], f: Format, out: &mut dyn Sink) -> Result<()> {
    let [ledger] = ledgers else {
        return affected_across(ledgers, f, out);
    };
    if f == Format::Table {
        writeln!(
            out,
            "Affected mailboxes in `{}`",
            for_terminal(&ledger.path().display().to_string())
        )?;
    }
    let mut w = mailbox_sheet(out, f)?;
    ledger.for_each_affected_mailbox(|m| mailbox_line(&mut w, m))?;
    w.finish()?;
    let mut w = sender_domain_sheet(out, f)?;
    ledger.for_each_bounced_sender_domain(|d| sender_domain_line(&mut w, d))?;
    w.finish()?;
    Ok(())
}

/// `--affected` over several ledgers: a mailbox (or sender) found in several is one row.
fn affected_across(ledgers: &[Ledger], f: Format, out: &mut dyn Sink) -> Result<()> {
    let lines = ledger_lines(ledgers)?;
    if f == Format::Table {
        writeln!(out, "Affected mailboxes in {} ledgers", lines.len())?;
    }
    ledgers_section(out, f, &lines)?;
    let mut w = mailbox_sheet(out, f)?;
    combined::for_each_affected_mailbox(ledgers, |m| mailbox_line(&mut w, m))?;
    w.finish()?;
    let mut w = sender_domain_sheet(out, f)?;
    for d in combined::bounced_sender_domains(ledgers)? {
        sender_domain_line(&mut w, &d)?;
    }
    w.finish()?;
    Ok(())
}

fn mailbox_sheet(out: &mut dyn Sink, f: Format) -> Result<SheetWriter<'_>> {
    SheetWriter::begin(
        out,
        f,
        "mailbox",
        "Mailboxes (worst delay: arrival to delivery; bounced includes DSNs still owed; pending includes deferred)",
        &[
            "mailbox",
            "messages",
            "delivered_late",
            "worst_delay_seconds",
            "bounced",
            "dropped",
            "held",
            "pending",
            "uncertain",
            "over_quota",
        ],
    )
    .context("cannot write the report")
}

fn mailbox_line(w: &mut SheetWriter<'_>, m: &MailboxRow) -> Result<()> {
    w.row(vec![
        Cell::text(m.mailbox.as_str()),
        Cell::Count(m.messages),
        Cell::Count(m.delivered_late),
        Cell::Seconds(m.worst_delay_seconds),
        Cell::Count(m.bounced),
        Cell::Count(m.dropped),
        Cell::Count(m.held),
        Cell::Count(m.pending),
        Cell::Count(m.uncertain),
        Cell::Count(m.over_quota),
    ])
    .context("cannot write the report")
}

fn sender_domain_sheet(out: &mut dyn Sink, f: Format) -> Result<SheetWriter<'_>> {
    SheetWriter::begin(
        out,
        f,
        "sender_domain",
        "Sender domains sent bounces",
        &["sender_domain", "dsns", "senders", "recipients"],
    )
    .context("cannot write the report")
}

fn sender_domain_line(w: &mut SheetWriter<'_>, d: &SenderDomainRow) -> Result<()> {
    w.row(vec![
        Cell::text(d.sender_domain.as_str()),
        Cell::Count(d.dsns),
        Cell::Count(d.senders),
        Cell::Count(d.recipients),
    ])
    .context("cannot write the report")
}

fn html_report<'a>(
    ledgers: &[Ledger],
    cfg: &ReportConfig,
    inc: &'a Incident,
    plan: &'a Plan,
    facts: &Facts,
) -> Result<HtmlReport<'a>> {
    let count = |states: &[RcptState]| -> u64 {
        states
            .iter()
            .map(|s| plan.states.get(s).copied().unwrap_or(0))
            .sum()
    };
    let outcomes = vec![
        ("delivered".to_string(), count(&[RcptState::Delivered])),
        (
            "bounced".to_string(),
            count(&[RcptState::Bounced, RcptState::Failed]),
        ),
        ("dropped".to_string(), count(&[RcptState::Dropped])),
        ("held".to_string(), count(&[RcptState::Held])),
        (
            "pending".to_string(),
            count(&[RcptState::Pending, RcptState::InFlight, RcptState::Deferred]),
        ),
        ("uncertain".to_string(), count(&[RcptState::Uncertain])),
    ];
    let mut delays = [0u64; DELAY_BUCKETS];
    for ledger in ledgers {
        ledger.for_each_delivery_delay(|d| delays[html::delay_bucket(d)] += 1)?;
    }
    let projection = match plan.projected(&cfg.pace) {
        Some(d) => format!(
            "{} messages would be delivered, taking at least {} at {} (batches of {}, pause {}).",
            plan.deliveries,
            format_duration(d),
            cfg.pace.rate.map(|r| r.to_string()).unwrap_or_default(),
            cfg.pace.batch_size,
            format_duration(cfg.pace.pause)
        ),
        None => format!(
            "{} messages would be delivered, unthrottled (as fast as the store takes them).",
            plan.deliveries
        ),
    };
    Ok(HtmlReport {
        incident: inc,
        now: cfg.now,
        plan,
        outcomes,
        delays,
        domains: top_domain_outcomes(ledgers, cfg.top)?,
        projection,
        what_if: what_if(cfg, plan)
            .into_iter()
            .map(|(r, d)| (r.to_string(), d))
            .collect(),
        anomalies: anomalies(inc, plan, facts),
        quarantined: facts.quarantine.0,
        quarantine: facts.quarantine.1.clone(),
    })
}

/// Domains by all their recipients (settled or not), most first, at most `n`.
fn top_domain_outcomes(ledgers: &[Ledger], n: usize) -> Result<Vec<DomainOutcomes>> {
    let counts = match ledgers {
        [ledger] => ledger.domain_state_counts()?,
        _ => combined::domain_state_counts(ledgers)?,
    };
    let mut domains: Vec<DomainOutcomes> = Vec::new();
    // A duplicate is an extra copy of mail whose first copy's recipient is counted already
    // (the plan leaves it out as settled): counting it made the totals disagree with the
    // text report's (206 recipients there, 208 here, on the sample).
    let counts = counts
        .into_iter()
        .filter(|(_, state, _)| *state != RcptState::Duplicate);
    for (domain, state, count) in counts {
        if domains.last().is_none_or(|d| d.domain != domain) {
            domains.push(DomainOutcomes {
                domain,
                ..DomainOutcomes::default()
            });
        }
        let Some(d) = domains.last_mut() else {
            continue;
        };
        // Every state has its column, and the total is their sum.
        let column = match state {
            RcptState::Delivered | RcptState::DeliveredBefore => &mut d.delivered,
            RcptState::Bounced | RcptState::Failed => &mut d.bounced,
            RcptState::Dropped => &mut d.dropped,
            RcptState::Held => &mut d.held,
            RcptState::Pending | RcptState::InFlight | RcptState::Deferred => &mut d.pending,
            RcptState::Uncertain => &mut d.uncertain,
            RcptState::Duplicate => continue, // left out above
        };
        *column += count;
        d.total += count;
    }
    domains.sort_by(|a, b| b.total.cmp(&a.total).then(a.domain.cmp(&b.domain)));
    domains.truncate(n);
    Ok(domains)
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

pub fn window_name(inc: &Incident, index: usize) -> String {
    if index == OUTSIDE_INDEX {
        crate::classify::OUTSIDE.to_string()
    } else {
        inc.windows[index].name.clone()
    }
}

fn window_action(inc: &Incident, index: usize) -> &'static str {
    if index == OUTSIDE_INDEX {
        inc.outside.as_str()
    } else {
        inc.windows[index].action.as_str()
    }
}
