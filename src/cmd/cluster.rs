//! `spoolreplay cluster pause|resume|status`: the operator's view of the runs that share a
//! `--cluster` address.

use std::time::Duration;

use anyhow::Result;

use crate::cli::ClusterAction;
use crate::cluster::{Admin, ClusterUrl, Unreachable};
use crate::config::Output;
use crate::exit::{Exit, Failure};
use crate::pace::format_rate;
use crate::report::Printer;
use crate::report::event::Event;
use crate::report::table::Table;
use crate::sanitize::for_terminal;
use crate::throttle::format_duration;

pub fn run(output: Output, url: &ClusterUrl, action: ClusterAction) -> Result<Exit> {
    let printer = Printer::new(output);
    let mut admin = Admin::connect(url).map_err(unavailable)?;
    match action {
        ClusterAction::Pause => {
            admin.pause().map_err(unavailable)?;
            printer.note(&format!(
                "cluster {url} paused: members finish what is in flight and wait; `spoolreplay cluster resume --cluster {url}` goes on"
            ));
        }
        ClusterAction::Resume => {
            admin.resume().map_err(unavailable)?;
            printer.note(&format!("cluster {url} resumed"));
        }
        ClusterAction::Status => {
            let status = admin.status().map_err(unavailable)?;
            if printer.json_mode() {
                printer.event(&Event::ClusterStatus(&status))?;
                return Ok(Exit::Done);
            }
            let mut table = Table::new(&[
                "Member",
                "Ledger",
                "State",
                "Messages",
                "Delivered",
                "Deferred",
                "Failed",
                "Duplicate",
                "Pace",
                "Conns",
                "ETA",
                "Heartbeat",
            ]);
            let eta = |e: Option<u64>| {
                e.map(|s| format_duration(Duration::from_secs(s)))
                    .unwrap_or_else(|| "?".into())
            };
            let count = |c: &std::collections::BTreeMap<String, u64>, k: &str| {
                c.get(k).copied().unwrap_or(0).to_string()
            };
            for m in &status.members {
                let beat = if m.stale {
                    format!("{}s ago (stale)", m.heartbeat_age)
                } else {
                    format!("{}s ago", m.heartbeat_age)
                };
                let state = match &m.paused_by {
                    Some(by) if m.state == "paused" => format!("paused ({})", for_terminal(by)),
                    _ => for_terminal(&m.state).into_owned(),
                };
                table.row(vec![
                    for_terminal(&m.id).into_owned(),
                    for_terminal(&m.ledger).into_owned(),
                    state,
                    m.handled.to_string(),
                    count(&m.counts, "delivered"),
                    count(&m.counts, "deferred"),
                    count(&m.counts, "failed"),
                    count(&m.counts, "duplicate"),
                    for_terminal(&m.pace).into_owned(),
                    m.connections.to_string(),
                    if m.state == "finished" {
                        "done".into()
                    } else {
                        eta(m.eta_seconds)
                    },
                    beat,
                ]);
            }
            table.row(vec![
                "Total".into(),
                String::new(),
                String::new(),
                status.handled.to_string(),
                count(&status.counts, "delivered"),
                count(&status.counts, "deferred"),
                count(&status.counts, "failed"),
                count(&status.counts, "duplicate"),
                String::new(),
                status.connections.to_string(),
                eta(status.eta_seconds),
                String::new(),
            ]);
            let mut text = format!(
                "Cluster {}{}\n",
                status.cluster,
                if status.paused { " (paused)" } else { "" }
            );
            if let Some(rate) = status.pace {
                text.push_str(&format!(
                    "Shared pace {} ({}, seen by {})\n",
                    format_rate(Some(rate)),
                    for_terminal(status.pace_reason.as_deref().unwrap_or("")),
                    for_terminal(status.pace_member.as_deref().unwrap_or("?"))
                ));
            }
            text.push_str(&table.render());
            for m in &status.members {
                if let Some(refusal) = &m.last_refusal {
                    text.push_str(&format!(
                        "Last refusal seen by {}{}: {}\n",
                        for_terminal(&m.id),
                        m.last_refusal_at
                            .as_deref()
                            .map(|at| format!(" at {}", for_terminal(at)))
                            .unwrap_or_default(),
                        for_terminal(refusal)
                    ));
                }
            }
            printer.data(&text)?;
        }
    }
    Ok(Exit::Done)
}

/// Redis cannot be used: 69, like a store that is down.
pub fn unavailable(e: Unreachable) -> anyhow::Error {
    anyhow::Error::new(Failure::new(Exit::Unavailable, e.to_string()).with_hint(
        "check that Redis runs there and the address and SPOOLREPLAY_REDIS_PASSWORD are right",
    ))
}
