//! `spoolreplay report`: the dry run. Reads the ledger, classifies against the incident,
//! prints the plan; writes nothing.

use anyhow::Result;
use serde_json::json;

use crate::classify::ALL_DISPOSITIONS;
use crate::config::{Output, ReportConfig};
use crate::exit::Exit;
use crate::incident::Incident;
use crate::ledger::Ledger;
use crate::plan::{OUTSIDE_INDEX, Plan, projected_duration};
use crate::report::table::{Table, human_bytes};
use crate::report::{Printer, json as events};
use crate::sanitize::for_terminal;
use crate::throttle::format_duration;

pub fn run(ledger_path: &std::path::Path, output: Output, cfg: ReportConfig) -> Result<Exit> {
    let printer = Printer::new(output);
    let ledger = Ledger::open_read(ledger_path)?;
    let mut plan = Plan::default();
    ledger.for_each_message(|m, r| {
        plan.add(&cfg.incident, cfg.now, m, r);
        Ok(())
    })?;
    let (quarantined, q_rows) = ledger.quarantined(cfg.top)?;
    let inc = &cfg.incident;

    if printer.json_mode() {
        emit_json(&printer, &cfg, &plan, quarantined, &q_rows)?;
        return Ok(Exit::Done);
    }
    let mut out = String::new();
    out.push_str(&format!(
        "Plan for \"{}\" at {} ({} messages in the ledger)\n\n",
        for_terminal(&inc.name),
        cfg.now.to_rfc3339(),
        plan.messages
    ));
    let mut t = Table::new(&[
        "window",
        "action",
        "disposition",
        "messages#",
        "recipients#",
        "bytes#",
    ]);
    for ((w, d), c) in &plan.by_window {
        t.row(vec![
            window_name(inc, *w),
            window_action(inc, *w).to_string(),
            d.as_str().to_string(),
            c.messages.to_string(),
            c.recipients.to_string(),
            human_bytes(c.bytes),
        ]);
    }
    if t.is_empty() {
        out.push_str("Nothing left to do: every recipient is settled.\n");
    } else {
        out.push_str(&t.render());
    }
    out.push_str(&format!(
        "\nDSNs for expired and bounced mail: {} (to {} distinct senders); refusals by the store may add more\n",
        plan.dsns,
        plan.dsn_senders.len()
    ));
    out.push_str(&format!(
        "Messages that would be delivered: {}",
        plan.deliveries
    ));
    match plan.projected(&cfg.pace) {
        Some(d) => out.push_str(&format!(
            ", taking at least {} at {} (batches of {}, pause {})\n",
            format_duration(d),
            cfg.pace.rate.map(|r| r.to_string()).unwrap_or_default(),
            cfg.pace.batch_size,
            format_duration(cfg.pace.pause)
        )),
        None => out.push_str(
            " (unthrottled: as fast as the store takes them; pass --rate N/s for a projection)\n",
        ),
    }
    for rate in what_if_rates(&cfg) {
        let mut pace = cfg.pace;
        pace.rate = Some(rate);
        if let Some(d) = projected_duration(plan.deliveries, &pace) {
            out.push_str(&format!("  at {rate}: {}\n", format_duration(d)));
        }
    }
    if let (Some(o), Some(n)) = (plan.oldest, plan.newest) {
        out.push_str(&format!(
            "Oldest arrival: {}\nNewest arrival: {}\n",
            o.to_rfc3339(),
            n.to_rfc3339()
        ));
    }
    let settled: Vec<String> = plan
        .states
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    out.push_str(&format!(
        "Recipients by state now: {}\n",
        if settled.is_empty() {
            "none".into()
        } else {
            settled.join(", ")
        }
    ));

    out.push_str("\nTop recipient domains (open recipients)\n");
    let mut t = Table::new(&[
        "domain",
        "recipients#",
        "deliver#",
        "bounce#",
        "hold#",
        "drop#",
    ]);
    for (d, c) in plan.top_domains(cfg.top) {
        t.row(vec![
            for_terminal(d),
            c.recipients.to_string(),
            c.deliver.to_string(),
            c.bounce.to_string(),
            c.hold.to_string(),
            c.drop.to_string(),
        ]);
    }
    out.push_str(&t.render());

    out.push_str(&format!(
        "\nArrivals per hour ({})\n",
        inc.restored_at.offset()
    ));
    let mut t = Table::new(&["hour", "window", "messages#"]);
    for ((hour, w), n) in &plan.arrivals {
        t.row(vec![
            hour.format("%Y-%m-%d %H:00").to_string(),
            window_name(inc, *w),
            n.to_string(),
        ]);
    }
    out.push_str(&t.render());

    out.push_str(&format!("\nQuarantined items: {quarantined}\n"));
    for q in &q_rows {
        out.push_str(&format!(
            "  {}{}: {}\n",
            for_terminal(&q.source_path),
            if q.source_format == "mbox" {
                format!(" (byte {})", q.source_offset)
            } else {
                String::new()
            },
            for_terminal(&q.reason)
        ));
    }
    if quarantined > q_rows.len() as u64 {
        out.push_str(&format!(
            "  … and {} more (--top N shows more)\n",
            quarantined - q_rows.len() as u64
        ));
    }
    printer.data(&out)?;
    Ok(Exit::Done)
}

fn emit_json(
    printer: &Printer,
    cfg: &ReportConfig,
    plan: &Plan,
    quarantined: u64,
    q_rows: &[crate::ledger::QuarantineRow],
) -> Result<()> {
    let inc = &cfg.incident;
    for ((w, d), c) in &plan.by_window {
        printer.event(&json!({
            "type": "plan",
            "window": window_name(inc, *w),
            "action": window_action(inc, *w),
            "disposition": d.as_str(),
            "messages": c.messages,
            "recipients": c.recipients,
            "bytes": c.bytes,
        }))?;
    }
    for (d, c) in plan.top_domains(cfg.top) {
        printer.event(&json!({
            "type": "domain", "domain": d, "recipients": c.recipients,
            "deliver": c.deliver, "bounce": c.bounce, "hold": c.hold, "drop": c.drop,
        }))?;
    }
    for ((hour, w), n) in &plan.arrivals {
        printer.event(&json!({
            "type": "arrivals", "hour": hour.to_rfc3339(), "window": window_name(inc, *w), "messages": n,
        }))?;
    }
    for q in q_rows {
        printer.event(&events::quarantined(q))?;
    }
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
    printer.event(&json!({
        "type": "report_summary",
        "incident": inc.name,
        "now": cfg.now.to_rfc3339(),
        "messages": plan.messages,
        "dispositions": dispositions,
        "states": states,
        "deliveries": plan.deliveries,
        "dsns": plan.dsns,
        "dsn_senders": plan.dsn_senders.len(),
        "projected_seconds": plan.projected(&cfg.pace).map(|d| d.as_secs_f64()),
        "oldest": plan.oldest.map(|t| t.to_rfc3339()),
        "newest": plan.newest.map(|t| t.to_rfc3339()),
        "quarantined": quarantined,
    }))?;
    Ok(())
}

/// A few other rates to compare, around the chosen one (or common ones when unthrottled).
fn what_if_rates(cfg: &ReportConfig) -> Vec<crate::throttle::RateSpec> {
    let candidates: &[&str] = &["50/s", "200/s", "1000/s"];
    candidates
        .iter()
        .filter_map(|s| s.parse().ok())
        .filter(|r| Some(*r) != cfg.pace.rate)
        .collect()
}

pub fn window_name(inc: &Incident, index: usize) -> String {
    if index == OUTSIDE_INDEX {
        crate::classify::OUTSIDE.to_string()
    } else {
        for_terminal(&inc.windows[index].name)
    }
}

fn window_action(inc: &Incident, index: usize) -> &'static str {
    if index == OUTSIDE_INDEX {
        inc.outside.as_str()
    } else {
        inc.windows[index].action.as_str()
    }
}
