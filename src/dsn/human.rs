//! Part 1 of a DSN: the plain-text explanation for people, wrapped and quoted-printable
//! when it needs to be.

use super::encode::{bare_address, one_line, quoted_printable, truncated, visible};
use super::returned::Returned;
use super::{Action, DIAGNOSTIC_LIMIT, DsnRecipient, DsnRequest, HUMAN_WIDTH, rfc5322_date};

pub(super) fn human_part(req: &DsnRequest<'_>, returned: Option<Returned>) -> Vec<u8> {
    let text = human_text(req, returned);
    let mut part = String::new();
    if text.is_ascii() {
        part.push_str("Content-Type: text/plain; charset=us-ascii\r\n");
        part.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
        part.push_str(&text);
    } else {
        part.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        part.push_str("Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        part.push_str(&quoted_printable(text.as_bytes()));
    }
    part.into_bytes()
}

/// The explanation, wrapped to `TEXT_WIDTH` with CRLF line ends.
fn human_text(req: &DsnRequest<'_>, returned: Option<Returned>) -> String {
    let mut lines: Vec<String> = Vec::new();
    push_wrapped(
        &mut lines,
        "",
        &format!(
            "This report was written by spoolreplay on {}.",
            req.reporting_mta
        ),
    );
    lines.push(String::new());
    push_wrapped(&mut lines, "", summary(req.recipients));
    lines.push(String::new());
    push_wrapped(
        &mut lines,
        "",
        &format!("Incident: {}", one_line(req.incident)),
    );
    lines.push(String::new());
    for paragraph in req.explanation.lines() {
        push_wrapped(&mut lines, "", &one_line(paragraph));
    }
    lines.push(String::new());
    lines.push("Recipients:".to_string());
    for rcpt in req.recipients {
        lines.push(String::new());
        push_wrapped(
            &mut lines,
            "  ",
            &format!("<{}>", visible(bare_address(&rcpt.final_recipient))),
        );
        push_wrapped(
            &mut lines,
            "    ",
            &format!("{}, status {}", rcpt.action.as_str(), rcpt.status),
        );
        if let Some(diag) = &rcpt.diagnostic {
            let (kind, text) = diag.type_and_text();
            push_wrapped(
                &mut lines,
                "    ",
                &format!("{kind}; {}", truncated(&one_line(text), DIAGNOSTIC_LIMIT)),
            );
        }
    }
    lines.push(String::new());
    push_wrapped(
        &mut lines,
        "",
        &format!(
            "The message arrived on {} and has queue ID {}. {}",
            rfc5322_date(&req.arrival),
            visible(req.queue_id),
            match returned {
                Some(Returned::Full) => "A copy of it is attached.",
                Some(Returned::Headers) => "Its header is attached.",
                None => "It is not attached.",
            }
        ),
    );
    let mut text = lines.join("\r\n");
    text.push_str("\r\n");
    text
}

fn push_wrapped(lines: &mut Vec<String>, indent: &str, text: &str) {
    lines.extend(wrap(text, indent, HUMAN_WIDTH));
}

fn summary(recipients: &[DsnRecipient]) -> &'static str {
    let any = |action: Action| recipients.iter().any(|r| r.action == action);
    if any(Action::Failed) {
        "Your message could not be delivered to one or more of its recipients, and no \
         further attempts will be made for them."
    } else if any(Action::Delayed) {
        "Your message has not yet been delivered to one or more of its recipients. It is \
         still being retried; you do not need to send it again."
    } else {
        "Your message was delivered to the recipients listed below."
    }
}

/// Greedy word wrap; words longer than the width are split.
pub(super) fn wrap(text: &str, indent: &str, width: usize) -> Vec<String> {
    let room = width.saturating_sub(indent.chars().count()).max(1);
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > room {
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            lines.push(word.drain(..room).collect());
        }
        let word: String = word.into_iter().collect();
        let current_len = current.chars().count();
        if current_len > 0 && current_len + 1 + word.chars().count() > room {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines.into_iter().map(|l| format!("{indent}{l}")).collect()
}
