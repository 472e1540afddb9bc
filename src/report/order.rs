//! The plan's projection under `--order`: when each window's mail (or, for `fair`, every
//! mailbox's first message) will have been handed over, as prose for the table and as
//! the `order` section for JSON and CSV. The milestones are computed in `plan`.

use std::io::{self, Write};

use crate::ledger::DeliveryOrder;
use crate::plan::{Milestone, MilestoneKind, order_milestones};
use crate::report::event::Event;
use crate::report::sections::PlanReport;
use crate::report::sheet::{Format, SheetWriter, Sink};
use crate::sanitize::for_terminal;
use crate::throttle::format_duration;

/// The order's name as `--order` spells it.
pub fn name(order: DeliveryOrder) -> &'static str {
    match order {
        DeliveryOrder::Arrival => "arrival",
        DeliveryOrder::Newest => "newest",
        DeliveryOrder::Fair => "fair",
    }
}

fn meaning(order: DeliveryOrder) -> &'static str {
    match order {
        DeliveryOrder::Arrival => "oldest first",
        DeliveryOrder::Newest => "newest first: the mail people are waiting for now",
        DeliveryOrder::Fair => "round-robin across mailboxes",
    }
}

fn what(kind: &MilestoneKind) -> String {
    match kind {
        MilestoneKind::Window(Some(name)) => format!("window `{}`", for_terminal(name)),
        MilestoneKind::Window(None) => "mail outside every window".into(),
        MilestoneKind::FirstPerMailbox => "every mailbox's first message".into(),
    }
}

fn when(d: Option<std::time::Duration>) -> String {
    d.map(format_duration).unwrap_or_else(|| "?".into())
}

/// What the report's `--order` means for its deliveries.
fn milestones(r: &PlanReport<'_>) -> Vec<Milestone> {
    order_milestones(r.plan, r.incident, r.order, &r.pace)
}

/// The lines under "Messages that would be delivered" in the table.
pub fn prose(out: &mut dyn Write, r: &PlanReport<'_>) -> io::Result<()> {
    let milestones = milestones(r);
    if milestones.is_empty() {
        return Ok(());
    }
    writeln!(out, "In --order {} ({}):", name(r.order), meaning(r.order))?;
    for m in &milestones {
        match m.kind {
            MilestoneKind::FirstPerMailbox => writeln!(
                out,
                "  {} within the first {} messages (at most), after {}",
                what(&m.kind),
                m.messages,
                when(m.done_after)
            )?,
            MilestoneKind::Window(_) if m.from_messages == 0 => writeln!(
                out,
                "  {}: {} messages, delivered first, all of it after {}",
                what(&m.kind),
                m.messages,
                when(m.done_after)
            )?,
            MilestoneKind::Window(_) => writeln!(
                out,
                "  {}: {} messages, from {} to {}",
                what(&m.kind),
                m.messages - m.from_messages,
                when(m.starts_after),
                when(m.done_after)
            )?,
        }
    }
    Ok(())
}

/// The `order` section (JSON and CSV; the table says it in prose).
pub fn section(out: &mut dyn Sink, f: Format, r: &PlanReport<'_>) -> io::Result<()> {
    if f == Format::Table {
        return Ok(());
    }
    let mut w = SheetWriter::begin(
        out,
        f,
        "order",
        "Delivery order",
        &[
            "order",
            "milestone",
            "window",
            "from_messages",
            "messages",
            "starts_seconds",
            "done_seconds",
        ],
    )?;
    for m in milestones(r) {
        let window = match &m.kind {
            MilestoneKind::Window(name) => name.clone(),
            MilestoneKind::FirstPerMailbox => None,
        };
        w.row(&Event::Order {
            order: name(r.order),
            milestone: m.kind.key(),
            window,
            from_messages: m.from_messages,
            messages: m.messages,
            starts_seconds: m.starts_after,
            done_seconds: m.done_after,
        })?;
    }
    w.finish()?;
    Ok(())
}
