//! The JSON Lines events, all built here so the format is documented in one place (and in
//! README). Every object has a `type`; times are RFC 3339; counts are numbers.

use serde_json::{Value, json};

use crate::ledger::{DsnRow, QuarantineRow};

/// An item quarantined just now, by `ingest`.
pub fn quarantined_item(q: &crate::spool::Quarantined) -> Value {
    json!({
        "type": "quarantined",
        "format": q.source.format.as_str(),
        "path": q.source.path.to_string_lossy(),
        "offset": q.source.offset,
        "reason": q.reason,
    })
}

/// A quarantined item as the ledger holds it, by `report` and `status`.
pub fn quarantined(q: &QuarantineRow) -> Value {
    json!({
        "type": "quarantined",
        "format": q.source_format,
        "path": q.source_path,
        "offset": q.source_offset,
        "reason": q.reason,
        "first_seen": q.first_seen,
    })
}

pub fn dsn(d: &DsnRow) -> Value {
    json!({
        "type": "dsn",
        "id": d.id,
        "kind": d.kind.as_str(),
        "queue_id": d.queue_id,
        "to": d.envelope_to,
        "message_id": d.rfc_message_id,
        "recipients": d.recipients,
        "created_at": d.created_at,
        "written_path": d.written_path,
        "send_state": d.send_state.as_str(),
        "sent_at": d.sent_at,
        "send_reply": d.send_reply,
    })
}

/// One recipient's outcome during `run`.
pub fn outcome(queue_id: &str, recipient: &str, state: &str, detail: &str) -> Value {
    json!({
        "type": "outcome",
        "queue_id": queue_id,
        "recipient": recipient,
        "state": state,
        "detail": detail,
    })
}

/// A plan that would bounce or expire more than `--max-bounce-share` (`run` refuses it,
/// `report` warns).
pub fn mass_bounce(m: &crate::plan::MassBounce) -> Value {
    json!({
        "type": "mass_bounce",
        "open_messages": m.open,
        "expire": m.expire,
        "bounce": m.bounce,
        "drop": m.drop,
        "percent": m.percent(),
        "max_bounce_share": m.max_share,
        "rule": m.rule,
        "now": m.now.to_rfc3339(),
        "fixed_clock": m.fixed_clock,
    })
}
