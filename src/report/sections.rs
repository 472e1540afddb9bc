//! The sections of `report`'s plan, in every format: the plan per window and
//! disposition, domains, ages, arrivals, anomalies, the bounce policy, quarantine, the
//! projection and the summary (prose in a table, an event in JSON, `key,value` rows in
//! CSV). Built from values `cmd::report` read from the ledgers; reads nothing itself.

use std::io;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};

use crate::classify::ALL_DISPOSITIONS;
use crate::incident::Incident;
use crate::ledger::QuarantineRow;
use crate::ledger::queries::DuplicateGroup;
use crate::pace::PaceConfig;
use crate::plan::{
    MASS_BOUNCE_HINT, MassBounce, OUTSIDE_INDEX, Plan, age_labels, projected_duration,
};
use crate::report::event::{Ages, Event};
use crate::report::html::AnomalyLine;
use crate::report::sheet::{Cell, Format, SheetWriter, Sink};
use crate::sanitize::for_terminal;
use crate::throttle::{RateSpec, format_duration};

/// What the plan shows besides the plan itself, read from the ledgers.
pub struct Facts {
    /// Open quarantine items: total, and the first `--top`.
    pub quarantine: (u64, Vec<QuarantineRow>),
    /// Duplicate groups, extra copies, and the first `--top` groups.
    pub duplicates: (u64, u64, Vec<DuplicateGroup>),
    /// The ledgers combined, when more than one: path, shard, messages.
    pub combined: Vec<LedgerLine>,
}

/// One of several combined ledgers, as the report names it.
pub struct LedgerLine {
    pub path: String,
    pub shard: String,
    pub messages: u64,
}

/// A plan and what it is shown with.
pub struct PlanReport<'a> {
    pub incident: &'a Incident,
    pub plan: &'a Plan,
    pub facts: &'a Facts,
    pub now: DateTime<FixedOffset>,
    /// The pace the projection assumes.
    pub pace: PaceConfig,
    /// `--top`: rows of the domain, age and sender-domain sections.
    pub top: usize,
    /// `--order`: what the projection says the order means (`report::order`).
    pub order: crate::ledger::DeliveryOrder,
    /// What `run`'s mass-bounce guard would refuse this plan for, if it would.
    pub mass_bounce: Option<MassBounce>,
}

/// The ledgers a combined report read (nothing for one ledger, whose report is unchanged).
pub fn ledgers_section(out: &mut dyn Sink, f: Format, lines: &[LedgerLine]) -> io::Result<()> {
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
        w.row(&Event::Ledger {
            ledger: &l.path,
            shard: &l.shard,
            messages: l.messages,
        })?;
    }
    w.finish()?;
    Ok(())
}

/// The plan: its heading (a table's), then every section in `f`'s form.
pub fn write_plan(out: &mut dyn Sink, f: Format, r: &PlanReport<'_>) -> io::Result<()> {
    let (inc, plan, facts) = (r.incident, r.plan, r.facts);
    if f == Format::Table {
        let source = match facts.combined.len() {
            0 => "the ledger".to_string(),
            n => format!("{n} ledgers"),
        };
        writeln!(
            out,
            "Plan for \"{}\" at {} ({} messages in {source})",
            for_terminal(&inc.name),
            r.now.to_rfc3339(),
            plan.messages
        )?;
        if let Some(m) = &r.mass_bounce {
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
        w.row(&Event::Plan {
            window: window_name(inc, *win),
            action: window_action(inc, *win),
            disposition: d.as_str(),
            messages: c.messages,
            recipients: c.recipients,
            bytes: c.bytes,
        })?;
    }
    w.finish()?;
    if f == Format::Table {
        summary_prose(out, r)?;
    }

    let mut w = SheetWriter::begin(
        out,
        f,
        "domain",
        "Top recipient domains (open recipients)",
        &["domain", "recipients", "deliver", "bounce", "hold", "drop"],
    )?;
    for (d, c) in plan.top_domains(r.top) {
        w.row(&Event::Domain {
            domain: d,
            recipients: c.recipients,
            deliver: c.deliver,
            bounce: c.bounce,
            hold: c.hold,
            drop: c.drop,
        })?;
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
            r.now.to_rfc3339()
        ),
        &columns,
    )?;
    let totals = plan.total_ages();
    let rows = std::iter::once(("TOTAL", totals.iter().sum::<u64>(), totals.to_vec()))
        .filter(|(_, total, _)| *total > 0)
        .chain(
            plan.top_domains(r.top)
                .into_iter()
                .map(|(d, c)| (d, c.recipients, c.ages.to_vec())),
        );
    for (domain, total, counts) in rows {
        w.row(&Event::Age {
            domain,
            total,
            ages: Ages {
                labels: &labels,
                counts,
            },
        })?;
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
        w.row(&Event::Arrivals {
            hour,
            window: window_name(inc, *win),
            messages: *n,
        })?;
    }
    w.finish()?;

    let mut w = SheetWriter::begin(
        out,
        f,
        "anomaly",
        "Anomalies (all messages, settled or not)",
        &["kind", "window", "messages", "examples"],
    )?;
    for a in anomalies(r) {
        w.row(&Event::Anomaly {
            kind: &a.kind,
            window: a.window.as_deref(),
            messages: a.messages,
            examples: a.examples.join(" "),
        })?;
    }
    w.finish()?;

    bounce_policy_section(out, f, r)?;
    quarantine_section(out, f, facts)?;
    projection_section(out, f, r)?;
    super::order::section(out, f, r)?;
    match f {
        Format::Json => summary_event(r).write_line(out)?,
        Format::Csv => summary_csv(out, r)?,
        Format::Table => {}
    }
    Ok(())
}

/// What the `[bounces]` policy does with the failure DSNs owed, per window and per sender
/// domain (the top sender domains by DSNs they would receive).
fn bounce_policy_section(out: &mut dyn Sink, f: Format, r: &PlanReport<'_>) -> io::Result<()> {
    let (inc, plan) = (r.incident, r.plan);
    let columns = ["dsns", "suppressed_unauthenticated", "suppressed_spam"];
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
        w.row(&Event::BouncePolicy {
            window: window_name(inc, *win),
            dsns: c.dsns,
            suppressed_unauthenticated: c.unauthenticated,
            suppressed_spam: c.spam,
        })?;
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
    for (d, c) in plan.top_sender_domains(r.top) {
        w.row(&Event::DsnSenderDomain {
            sender_domain: d,
            dsns: c.dsns,
            suppressed_unauthenticated: c.unauthenticated,
            suppressed_spam: c.spam,
        })?;
    }
    w.finish()?;
    Ok(())
}

/// The lines under the plan table: DSNs, deliveries and their projected duration, the
/// oldest and newest arrival, recipients per state.
fn summary_prose(out: &mut dyn Sink, r: &PlanReport<'_>) -> io::Result<()> {
    let plan = r.plan;
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
    match plan.projected(&r.pace) {
        Some(d) => writeln!(
            out,
            ", taking at least {} at {} (batches of {}, pause {})",
            format_duration(d),
            r.pace.rate.map(|r| r.to_string()).unwrap_or_default(),
            r.pace.batch_size,
            format_duration(r.pace.pause)
        )?,
        None => writeln!(
            out,
            " (unthrottled: as fast as the store takes them; pass --rate N/s for a projection)"
        )?,
    }
    for (rate, d) in what_if(r) {
        writeln!(out, "  at {rate}: {}", format_duration(d))?;
    }
    super::order::prose(out, r)?;
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
pub fn anomalies(r: &PlanReport<'_>) -> Vec<AnomalyLine> {
    let (inc, plan, facts) = (r.incident, r.plan, r.facts);
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

fn quarantine_section(out: &mut dyn Sink, f: Format, facts: &Facts) -> io::Result<()> {
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
    let mut w = SheetWriter::begin(
        out,
        f,
        "quarantined",
        "Quarantined items",
        &["format", "path", "offset", "reason", "first_seen"],
    )?;
    for q in rows {
        w.row(&Event::quarantined(q))?;
    }
    w.finish()?;
    Ok(())
}

/// The projection as rows (JSON and CSV; the table says it in prose): the chosen pace
/// first, then the what-if rates.
fn projection_section(out: &mut dyn Sink, f: Format, r: &PlanReport<'_>) -> io::Result<()> {
    let plan = r.plan;
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
    w.row(&Event::Projection {
        rate: r.pace.rate.map(|r| r.to_string()),
        selected: "yes",
        messages: plan.deliveries,
        seconds: plan.projected(&r.pace),
    })?;
    for (rate, d) in what_if(r) {
        w.row(&Event::Projection {
            rate: Some(rate.to_string()),
            selected: "no",
            messages: plan.deliveries,
            seconds: Some(d),
        })?;
    }
    w.finish()?;
    Ok(())
}

fn summary_event<'a>(r: &'a PlanReport<'a>) -> Event<'a> {
    let (inc, plan, facts) = (r.incident, r.plan, r.facts);
    let states = plan.states.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    let dispositions = ALL_DISPOSITIONS
        .iter()
        .map(|d| {
            let n: u64 = plan
                .by_window
                .iter()
                .filter(|((_, x), _)| x == d)
                .map(|(_, c)| c.messages)
                .sum();
            (d.as_str(), n)
        })
        .collect();
    let ledgers = (!facts.combined.is_empty())
        .then(|| facts.combined.iter().map(|l| l.path.as_str()).collect());
    Event::ReportSummary {
        incident: &inc.name,
        now: r.now.to_rfc3339(),
        messages: plan.messages,
        dispositions,
        states,
        deliveries: plan.deliveries,
        dsns: plan.dsns,
        dsn_senders: plan.dsn_senders.len(),
        dsns_suppressed_unauthenticated: plan.policy_totals().unauthenticated,
        dsns_suppressed_spam: plan.policy_totals().spam,
        projected_seconds: plan.projected(&r.pace).map(|d| d.as_secs_f64()),
        order: super::order::name(r.order),
        oldest: plan.oldest.map(|t| t.to_rfc3339()),
        newest: plan.newest.map(|t| t.to_rfc3339()),
        quarantined: facts.quarantine.0,
        outside: plan.outside.messages,
        unexpected: plan.unexpected.values().map(|a| a.messages).sum::<u64>(),
        duplicates: facts.duplicates.1,
        mass_bounce: r
            .mass_bounce
            .as_ref()
            .map(|m| Box::new(Event::mass_bounce(m))),
        ledgers,
    }
}

/// The summary as `key,value` rows.
fn summary_csv(out: &mut dyn Sink, r: &PlanReport<'_>) -> io::Result<()> {
    let (inc, plan, facts) = (r.incident, r.plan, r.facts);
    let mut w = SheetWriter::begin(out, Format::Csv, "summary", "", &["key", "value"])?;
    let mut kv = |k: &str, v: Cell| w.plain_row(vec![Cell::text(k), v]);
    kv("incident", Cell::text(inc.name.as_str()))?;
    kv("now", Cell::Text(r.now.to_rfc3339()))?;
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
pub fn what_if(r: &PlanReport<'_>) -> Vec<(RateSpec, Duration)> {
    ["50/s", "200/s", "1000/s"]
        .iter()
        .filter_map(|s| s.parse::<RateSpec>().ok())
        .filter(|rate| Some(*rate) != r.pace.rate)
        .filter_map(|rate| {
            let mut pace = r.pace;
            pace.rate = Some(rate);
            projected_duration(r.plan.deliveries, &pace).map(|d| (rate, d))
        })
        .collect()
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
