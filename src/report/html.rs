//! The HTML incident report (`report --html FILE`): one self-contained page with inline
//! CSS and SVG, no script and no network, readable in any browser and printable. Pure:
//! built from the plan and ledger aggregates the command gathered. Text from mail and from
//! the incident file is escaped.

use std::fmt::Write;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta, Timelike};

use crate::incident::Incident;
use crate::ledger::QuarantineRow;
use crate::plan::{OUTSIDE_INDEX, Plan};
use crate::report::svg::{self, Marker, Series, StackedChart, escape};
use crate::report::table::human_bytes;
use crate::throttle::format_duration;

/// Upper bounds (hours, exclusive) of the delivery-delay buckets, doubling; one more
/// bucket holds everything longer.
pub const DELAY_BOUNDS_HOURS: [i64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

pub const DELAY_BUCKETS: usize = DELAY_BOUNDS_HOURS.len() + 1;

/// The bucket of a delay from arrival to delivery.
pub fn delay_bucket(seconds: i64) -> usize {
    DELAY_BOUNDS_HOURS
        .iter()
        .position(|h| seconds < h * 3600)
        .unwrap_or(DELAY_BOUNDS_HOURS.len())
}

/// Labels of the delay buckets: `<1h`, `1-2h`, …, `256h+`.
pub fn delay_labels() -> Vec<String> {
    let mut out = vec![format!("<{}h", DELAY_BOUNDS_HOURS[0])];
    for pair in DELAY_BOUNDS_HOURS.windows(2) {
        out.push(format!("{}-{}h", pair[0], pair[1]));
    }
    out.push(format!(
        "{}h+",
        DELAY_BOUNDS_HOURS[DELAY_BOUNDS_HOURS.len() - 1]
    ));
    out
}

/// Recipients of one domain by outcome so far. `total` is the sum of the outcomes: extra
/// copies of the same mail (`duplicate`) are not recipients of their own, the first copy
/// counts (as in the plan of the text report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainOutcomes {
    pub domain: String,
    pub total: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub dropped: u64,
    pub held: u64,
    pub pending: u64,
    pub uncertain: u64,
}

/// One anomaly line: kind, window, messages, example queue ids.
#[derive(Debug, Clone)]
pub struct AnomalyLine {
    pub kind: String,
    pub window: Option<String>,
    pub messages: u64,
    pub examples: Vec<String>,
}

/// Everything the page shows.
pub struct HtmlReport<'a> {
    pub incident: &'a Incident,
    pub now: DateTime<FixedOffset>,
    pub plan: &'a Plan,
    /// (outcome, recipients): delivered, bounced, dropped, held, pending, uncertain.
    pub outcomes: Vec<(String, u64)>,
    pub delays: [u64; DELAY_BUCKETS],
    pub domains: Vec<DomainOutcomes>,
    /// The projection at the chosen pace, described, and at other rates.
    pub projection: String,
    pub what_if: Vec<(String, Duration)>,
    pub anomalies: Vec<AnomalyLine>,
    /// Open quarantine items: how many, and the first `--top` (as the text report lists).
    pub quarantined: u64,
    pub quarantine: Vec<QuarantineRow>,
}

/// Colours of the windows, in order; mail outside every window is grey.
const PALETTE: [&str; 8] = [
    "#2e86de", "#e67e22", "#c0392b", "#27ae60", "#8e44ad", "#16a085", "#d35400", "#2c3e50",
];
const OUTSIDE_COLOR: &str = "#95a5a6";

/// Colour of an outcome bar.
fn outcome_color(outcome: &str) -> &'static str {
    match outcome {
        "delivered" => "#27ae60",
        "bounced" => "#c0392b",
        "dropped" => "#7f8c8d",
        "held" => "#e67e22",
        "pending" => "#2e86de",
        _ => "#8e44ad",
    }
}

pub fn render(r: &HtmlReport<'_>) -> String {
    let inc = r.incident;
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – spoolreplay incident report</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1240px; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
th, td {{ padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: left; }}
td.n, th.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
time, td.stamp, td.name {{ white-space: nowrap; }}
.note {{ color: #555; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>{title}</h1>
<p class="note">Incident report by spoolreplay, as of <time datetime="{now}">{now}</time>. Mail store restored at <time datetime="{restored}">{restored}</time>; queue lifetime {lifetime} from {from}.</p>
"#,
        title = escape(&inc.name),
        now = escape(&r.now.to_rfc3339()),
        restored = escape(&inc.restored_at.to_rfc3339()),
        lifetime = escape(&format_duration(
            inc.queue_lifetime.to_std().unwrap_or_default()
        )),
        from = match inc.lifetime_from {
            crate::incident::LifetimeFrom::Arrival => "each arrival",
            crate::incident::LifetimeFrom::Restored => "the restore",
        },
    );
    timeline_section(&mut page, r);
    windows_table(&mut page, inc);
    outcomes_section(&mut page, r);
    delays_section(&mut page, r);
    domains_section(&mut page, r);
    plan_section(&mut page, r);
    bounces_section(&mut page, r);
    anomalies_section(&mut page, r);
    quarantine_section(&mut page, r);
    page.push_str("</body></html>\n");
    page
}

fn timeline_section(page: &mut String, r: &HtmlReport<'_>) {
    page.push_str(r#"<h2 id="timeline">Incident timeline: arrivals per hour</h2>"#);
    let Some(chart) = timeline_chart(r) else {
        page.push_str("<p>No mail in the ledger.</p>");
        return;
    };
    let _ = write!(
        page,
        r#"<p class="note">Messages by hour of arrival ({}), stacked by window; dashed lines mark the window boundaries and the restore.</p><figure id="timeline-chart">{}</figure>"#,
        escape(&r.incident.restored_at.offset().to_string()),
        svg::stacked_columns(&chart, 420.0)
    );
    if let Some(start) = timeline_start(r) {
        let earlier: u64 = r
            .plan
            .arrivals
            .iter()
            .filter(|((h, _), _)| *h < start)
            .map(|(_, n)| n)
            .sum();
        if earlier > 0 {
            let _ = write!(
                page,
                r#"<p class="note">{earlier} messages that arrived before {} are not drawn (the chart shows the last {} days of arrivals).</p>"#,
                escape(&start.format("%Y-%m-%d %H:00").to_string()),
                MAX_TIMELINE_HOURS / 24
            );
        }
    }
}

/// The longest timeline drawn, in hours: one column per hour, so one arrival decades off
/// (a damaged date) must not make millions of columns.
const MAX_TIMELINE_HOURS: i64 = 92 * 24;

/// The first hour the timeline shows: the first arrival, or `MAX_TIMELINE_HOURS` before
/// the last one.
fn timeline_start(r: &HtmlReport<'_>) -> Option<DateTime<FixedOffset>> {
    let first = r.plan.arrivals.keys().map(|(h, _)| *h).min()?;
    let last = r.plan.arrivals.keys().map(|(h, _)| *h).max()?;
    Some(first.max(last - TimeDelta::hours(MAX_TIMELINE_HOURS - 1)))
}

/// The hours from the first to the last arrival (at most `MAX_TIMELINE_HOURS`), one
/// series per window that has mail.
pub fn timeline_chart(r: &HtmlReport<'_>) -> Option<StackedChart> {
    let inc = r.incident;
    let first = timeline_start(r)?;
    let last = r.plan.arrivals.keys().map(|(h, _)| *h).max()?;
    let hours = ((last - first).num_hours().max(0) + 1) as usize;
    let slot_of = |t: DateTime<FixedOffset>| (t - first).num_hours().max(0) as usize;
    let mut windows: Vec<usize> = r.plan.arrivals.keys().map(|(_, w)| *w).collect();
    windows.sort_unstable();
    windows.dedup();
    let series = windows
        .iter()
        .map(|&w| {
            let mut values = vec![0; hours];
            for ((h, _), n) in r
                .plan
                .arrivals
                .iter()
                .filter(|((h, x), _)| *x == w && *h >= first)
            {
                if let Some(v) = values.get_mut(slot_of(*h)) {
                    *v += n;
                }
            }
            let (name, color) = if w == OUTSIDE_INDEX {
                (
                    crate::classify::OUTSIDE.to_string(),
                    OUTSIDE_COLOR.to_string(),
                )
            } else {
                (
                    inc.windows[w].name.clone(),
                    PALETTE[w % PALETTE.len()].to_string(),
                )
            };
            Series {
                name,
                color,
                values,
            }
        })
        .collect();
    let slots: Vec<String> = (0..hours)
        .map(|i| {
            (first + TimeDelta::hours(i as i64))
                .format("%Y-%m-%d %H:00")
                .to_string()
        })
        .collect();
    let ticks = (0..hours)
        .filter(|i| (first + TimeDelta::hours(*i as i64)).hour() == 0)
        .map(|i| {
            (
                i,
                (first + TimeDelta::hours(i as i64))
                    .format("%b %d")
                    .to_string(),
            )
        })
        .collect();
    let end = first + TimeDelta::hours(hours as i64);
    let at_slot = |t: DateTime<FixedOffset>| (t - first).num_seconds() as f64 / 3600.0;
    let mut markers = Vec::new();
    let mut push = |t: DateTime<FixedOffset>, label: String| {
        if t >= first && t <= end {
            markers.push(Marker {
                at_slot: at_slot(t),
                label,
            });
        }
    };
    for (i, w) in inc.windows.iter().enumerate() {
        push(w.start, format!("{} ▸", w.name));
        let next_starts_here = inc.windows.get(i + 1).is_some_and(|n| n.start == w.end);
        if !next_starts_here {
            push(w.end, format!("◂ {} ends", w.name));
        }
    }
    push(inc.restored_at, "restored".to_string());
    Some(StackedChart {
        title: "Arrivals per hour, stacked by window".into(),
        slots,
        ticks,
        series,
        markers,
    })
}

fn windows_table(page: &mut String, inc: &Incident) {
    let offset = *inc.restored_at.offset();
    let _ = write!(
        page,
        "<table id=\"windows\"><tr><th>window</th><th>from ({offset})</th><th>until ({offset})</th><th>action</th><th>note</th></tr>",
    );
    // Names and times are single tokens a reader scans down a column: they never wrap
    // (a browser broke `2023-01-22T20:00:00+01:00` inside). The times are shown in the
    // timeline's offset, to the minute, so the note keeps room to wrap in; each
    // `<time>` keeps the exact RFC 3339 instant.
    for w in &inc.windows {
        let _ = write!(
            page,
            "<tr><td class=\"name\">{}</td><td class=\"stamp\">{}</td><td class=\"stamp\">{}</td><td>{}{}</td><td>{}</td></tr>",
            escape(&w.name),
            local_time(w.start, offset),
            local_time(w.end, offset),
            w.action.as_str(),
            if w.expect_mail {
                ""
            } else {
                " (no mail expected)"
            },
            escape(w.note.as_deref().unwrap_or("")),
        );
    }
    let _ = write!(
        page,
        "<tr><td class=\"name\">outside</td><td colspan=\"2\">any other time</td><td>{}</td><td></td></tr></table>",
        inc.outside.as_str()
    );
}

fn outcomes_section(page: &mut String, r: &HtmlReport<'_>) {
    page.push_str(r#"<h2 id="outcomes">Outcomes so far (recipients)</h2>"#);
    let items: Vec<(String, u64, String)> = r
        .outcomes
        .iter()
        .map(|(o, n)| (o.clone(), *n, outcome_color(o).to_string()))
        .collect();
    let _ = write!(
        page,
        r#"<p class="note">Bounced includes recipients whose DSN is still to be made; pending includes in-flight and deferred ones; dropped means not delivered and no DSN (null sender, NOTIFY=NEVER, cancelled in the MTA).</p><figure id="outcomes-chart">{}</figure>"#,
        svg::horizontal_bars("Recipients by outcome", "outcome", &items)
    );
}

fn delays_section(page: &mut String, r: &HtmlReport<'_>) {
    page.push_str(r#"<h2 id="delays">Delivery delays (arrival → delivered)</h2>"#);
    let total: u64 = r.delays.iter().sum();
    if total == 0 {
        // An empty chart would be ten columns of 0 on an axis from 0 to 0: say it instead.
        page.push_str(
            r#"<p id="delays-none">No recipient has been delivered by spoolreplay yet.</p>"#,
        );
        return;
    }
    let buckets: Vec<(String, u64)> = delay_labels().into_iter().zip(r.delays).collect();
    let _ = write!(
        page,
        r#"<p class="note">{total} recipients delivered by spoolreplay, by how long after arrival they reached the store.</p><figure id="delays-chart">{}</figure>"#,
        svg::histogram("Delivery delays", &buckets, "#2e86de", 300.0)
    );
}

fn domains_section(page: &mut String, r: &HtmlReport<'_>) {
    let _ = write!(
        page,
        r#"<h2 id="domains">Top {} recipient domains (all recipients, by outcome so far)</h2><p class="note">Before a run every recipient is open, and these are the text report's domain totals; an extra copy of the same mail (a duplicate) is not counted again. Delivered includes mail the MTA had delivered before the spool was copied.</p>"#,
        r.domains.len()
    );
    let items: Vec<(String, u64, String)> = r
        .domains
        .iter()
        .map(|d| (d.domain.clone(), d.total, "#2e86de".to_string()))
        .collect();
    let _ = write!(
        page,
        r#"<figure id="domains-chart">{}</figure>"#,
        svg::horizontal_bars("Recipients per domain", "domain", &items)
    );
    page.push_str(
        "<table id=\"domains-table\"><tr><th>domain</th><th class=\"n\">recipients</th><th class=\"n\">delivered</th>\
         <th class=\"n\">bounced</th><th class=\"n\">dropped</th><th class=\"n\">held</th><th class=\"n\">pending</th><th class=\"n\">uncertain</th></tr>",
    );
    for d in &r.domains {
        let _ = write!(
            page,
            "<tr><td class=\"name\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&d.domain),
            d.total,
            d.delivered,
            d.bounced,
            d.dropped,
            d.held,
            d.pending,
            d.uncertain
        );
    }
    page.push_str("</table>");
}

fn plan_section(page: &mut String, r: &HtmlReport<'_>) {
    let plan = r.plan;
    page.push_str(r#"<h2 id="plan">What a run would do now</h2>"#);
    let _ = write!(
        page,
        "<p id=\"projection\">{}</p><ul>",
        escape(&r.projection)
    );
    for (rate, d) in &r.what_if {
        let _ = write!(
            page,
            "<li>at {}: {}</li>",
            escape(rate),
            escape(&format_duration(*d))
        );
    }
    let _ = write!(
        page,
        "</ul><p>DSNs that would go out: {} (to {} distinct senders).</p>",
        plan.dsns,
        plan.dsn_senders.len()
    );
    page.push_str(
        "<table id=\"plan-table\"><tr><th>window</th><th>disposition</th><th class=\"n\">messages</th>\
         <th class=\"n\">recipients</th><th class=\"n\">bytes</th></tr>",
    );
    for ((w, d), c) in &plan.by_window {
        let name = if *w == OUTSIDE_INDEX {
            crate::classify::OUTSIDE
        } else {
            r.incident.windows[*w].name.as_str()
        };
        // Bytes as the text report shows them; the exact number stays in `data-bytes`.
        let _ = write!(
            page,
            "<tr><td class=\"name\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\" data-bytes=\"{}\">{}</td></tr>",
            escape(name),
            d.as_str(),
            c.messages,
            c.recipients,
            c.bytes,
            human_bytes(c.bytes)
        );
    }
    page.push_str("</table>");
}

/// What the `[bounces]` policy does with the failure DSNs owed: per window, and the sender
/// domains that would receive the most (the same numbers as the text report's).
fn bounces_section(page: &mut String, r: &HtmlReport<'_>) {
    let plan = r.plan;
    let policy = &r.incident.bounces;
    let _ = write!(
        page,
        "<h2 id=\"bounces\">Failure DSNs under the bounce policy</h2><p class=\"note\">require = {}, spam = {}.</p>",
        policy.require.as_str(),
        match policy.spam {
            crate::bounce_policy::Spam::Bounce => "bounce",
            crate::bounce_policy::Spam::Suppress => "suppress",
        }
    );
    let head = "<th class=\"n\">DSNs</th><th class=\"n\">suppressed: unauthenticated</th><th class=\"n\">suppressed: spam</th></tr>";
    let _ = write!(
        page,
        "<table id=\"bounce-policy-table\"><tr><th>window</th>{head}"
    );
    for (w, c) in &plan.policy_by_window {
        let name = if *w == OUTSIDE_INDEX {
            crate::classify::OUTSIDE
        } else {
            r.incident.windows[*w].name.as_str()
        };
        let _ = write!(
            page,
            "<tr><td class=\"name\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(name),
            c.dsns,
            c.unauthenticated,
            c.spam
        );
    }
    let _ = write!(
        page,
        "</table><table id=\"dsn-sender-domains-table\"><tr><th>sender domain</th>{head}"
    );
    for (d, c) in plan.top_sender_domains(10) {
        let _ = write!(
            page,
            "<tr><td class=\"name\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(d),
            c.dsns,
            c.unauthenticated,
            c.spam
        );
    }
    page.push_str("</table>");
}

fn anomalies_section(page: &mut String, r: &HtmlReport<'_>) {
    page.push_str(r#"<h2 id="anomalies">Anomalies</h2><table id="anomalies-table"><tr><th>kind</th><th>window</th><th class="n">messages</th><th>examples (queue ids)</th></tr>"#);
    for a in &r.anomalies {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&a.kind),
            escape(a.window.as_deref().unwrap_or("")),
            a.messages,
            escape(&a.examples.join(" "))
        );
    }
    let _ = write!(
        page,
        "<tr><td>quarantined</td><td></td><td class=\"n\">{}</td><td>spool items that could not be read (listed below)</td></tr></table>",
        r.quarantined
    );
}

/// The quarantined spool items, listed as the text report lists them.
fn quarantine_section(page: &mut String, r: &HtmlReport<'_>) {
    let _ = write!(
        page,
        r#"<h2 id="quarantine">Quarantined spool items: {}</h2>"#,
        r.quarantined
    );
    if r.quarantine.is_empty() {
        page.push_str("<p>None: every spool item was read.</p>");
        return;
    }
    page.push_str(
        "<table id=\"quarantine-table\"><tr><th>spool item</th><th>reason</th><th>first seen</th></tr>",
    );
    for q in &r.quarantine {
        let at = if q.source_format == "mbox" {
            format!(" (byte {})", q.source_offset)
        } else {
            String::new()
        };
        let _ = write!(
            page,
            "<tr><td>{}{}</td><td>{}</td><td class=\"stamp\">{}</td></tr>",
            escape(&q.source_path),
            at,
            escape(&q.reason),
            time(&q.first_seen)
        );
    }
    page.push_str("</table>");
    let shown = r.quarantine.len() as u64;
    if r.quarantined > shown {
        let _ = write!(
            page,
            r#"<p class="note">… and {} more (--top N shows more).</p>"#,
            r.quarantined - shown
        );
    }
}

/// An instant as a `<time>` element showing it in `offset`, to the minute unless it has
/// seconds: `2023-01-22 20:00`.
fn local_time(t: DateTime<FixedOffset>, offset: FixedOffset) -> String {
    let local = t.with_timezone(&offset);
    let shown = if local.second() == 0 && local.nanosecond() == 0 {
        local.format("%Y-%m-%d %H:%M")
    } else {
        local.format("%Y-%m-%d %H:%M:%S")
    };
    format!(
        r#"<time datetime="{}">{shown}</time>"#,
        escape(&t.to_rfc3339())
    )
}

/// An RFC 3339 time as a `<time>` element.
fn time(rfc3339: &str) -> String {
    let t = escape(rfc3339);
    format!(r#"<time datetime="{t}">{t}</time>"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_buckets_double() {
        assert_eq!(delay_bucket(0), 0);
        assert_eq!(delay_bucket(3599), 0);
        assert_eq!(delay_bucket(3600), 1);
        assert_eq!(delay_bucket(255 * 3600), 8);
        assert_eq!(delay_bucket(256 * 3600), 9);
        assert_eq!(delay_bucket(-5), 0);
        assert_eq!(delay_labels().len(), DELAY_BUCKETS);
        assert_eq!(delay_labels()[1], "1-2h");
    }

    #[test]
    fn text_from_the_incident_is_escaped() {
        let mut inc = crate::incident::parse(
            r#"
name = "<b>outage</b>"
reporting_mta = "mx.example.net"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "5d"
[[window]]
name = "queued"
start = "2023-01-22T20:00:00+01:00"
end = "2023-01-23T16:00:00+01:00"
action = "deliver"
note = "<script>alert(1)</script>"
"#,
        )
        .unwrap();
        inc.windows[0].name = "q<x>".into();
        let plan = Plan::default();
        let page = render(&HtmlReport {
            incident: &inc,
            now: inc.restored_at,
            plan: &plan,
            outcomes: vec![("delivered".into(), 3)],
            delays: [0; DELAY_BUCKETS],
            domains: vec![DomainOutcomes {
                domain: "<evil>.example".into(),
                total: 1,
                ..DomainOutcomes::default()
            }],
            projection: "unthrottled".into(),
            what_if: vec![],
            anomalies: vec![],
            quarantined: 2,
            quarantine: vec![QuarantineRow {
                source_format: "eml".into(),
                source_path: "spool/<img>.eml".into(),
                source_offset: 0,
                reason: "bad sidecar: <b>".into(),
                first_seen: "2023-01-28T05:00:00.000Z".into(),
            }],
        });
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<evil>"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;evil&gt;.example"));
        assert!(page.contains("q&lt;x&gt;"));
        assert!(page.contains("spool/&lt;img&gt;.eml"), "{page}");
        assert!(page.contains("… and 1 more"), "{page}");
        // Nothing delivered: a sentence, not an empty chart.
        assert!(page.contains(r#"id="delays-none""#), "{page}");
        assert!(!page.contains(r#"id="delays-chart""#), "{page}");
    }
}
