//! The HTML report's content (`HtmlReport`) from the plan's report and what
//! `cmd::report` read for it from the ledgers: outcomes so far, the projection in words,
//! recipients per domain by outcome. Pure.

use crate::ledger::RcptState;
use crate::report::html::{DELAY_BUCKETS, DomainOutcomes, HtmlReport};
use crate::report::sections::{PlanReport, anomalies, what_if};
use crate::throttle::format_duration;

/// The page's content: the plan's report, the delivery delays (recipients per
/// `html::delay_bucket`) and the recipients per domain and state.
pub fn assemble<'a>(
    r: &PlanReport<'a>,
    delays: [u64; DELAY_BUCKETS],
    domain_states: Vec<(String, RcptState, u64)>,
) -> HtmlReport<'a> {
    let (plan, facts) = (r.plan, r.facts);
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
    let projection = match plan.projected(&r.pace) {
        Some(d) => format!(
            "{} messages would be delivered, taking at least {} at {} (batches of {}, pause {}).",
            plan.deliveries,
            format_duration(d),
            r.pace.rate.map(|r| r.to_string()).unwrap_or_default(),
            r.pace.batch_size,
            format_duration(r.pace.pause)
        ),
        None => format!(
            "{} messages would be delivered, unthrottled (as fast as the store takes them).",
            plan.deliveries
        ),
    };
    HtmlReport {
        incident: r.incident,
        now: r.now,
        plan,
        outcomes,
        delays,
        domains: top_domain_outcomes(domain_states, r.top),
        projection,
        what_if: what_if(r)
            .into_iter()
            .map(|(rate, d)| (rate.to_string(), d))
            .collect(),
        anomalies: anomalies(r),
        quarantined: facts.quarantine.0,
        quarantine: facts.quarantine.1.clone(),
    }
}

/// Domains by all their recipients (settled or not), most first, at most `n`.
fn top_domain_outcomes(counts: Vec<(String, RcptState, u64)>, n: usize) -> Vec<DomainOutcomes> {
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
    domains
}
