//! Small `.eml` spools written by a test into its temp dir (each message with a unique
//! `Message-ID` so a peer's copies can be counted), their run arguments (with
//! `TestIncident::deliver_all()`), and the ledger's audit trail (`events`) per recipient.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// Arrival of every generated message (inside `TestIncident::deliver_all()`'s one window).
pub const ARRIVAL: &str = "2023-01-23T10:00:00+01:00";

/// One message of a mini spool.
#[derive(Debug, Clone)]
pub struct Mail {
    /// File name without extension (also the queue id).
    pub name: String,
    /// The sidecar as JSON (sender, recipients, arrival, …).
    pub sidecar: Value,
    pub content: Vec<u8>,
}

impl Mail {
    /// A small ASCII message `n` to `recipients`, from `sender@remote.test`, with
    /// `Message-ID: <mini-N@remote.test>` and CRLF line ends (a leading-dot line included).
    pub fn plain(n: usize, recipients: &[&str]) -> Mail {
        let content = format!(
            "From: Sender <sender@remote.test>\r\nTo: {to}\r\nSubject: mini message {n}\r\n\
             Message-ID: {id}\r\nDate: Mon, 23 Jan 2023 10:00:00 +0100\r\n\r\n\
             Body of message {n}.\r\n.a line that starts with a dot\r\nend\r\n",
            to = recipients.join(", "),
            id = message_id(n),
        );
        Mail {
            name: format!("{n:04}-mini"),
            sidecar: json!({
                "sender": "sender@remote.test",
                "recipients": recipients,
                "arrival": ARRIVAL,
            }),
            content: content.into_bytes(),
        }
    }

    /// A copy of a sample-spool item (`0148-bank`), sidecar included, read as-is.
    pub fn from_sample(stem: &str) -> Mail {
        let dir = super::sample_spool();
        let content = std::fs::read(dir.join(format!("{stem}.eml"))).expect("sample .eml");
        let sidecar = std::fs::read(dir.join(format!("{stem}.json"))).expect("sample .json");
        Mail {
            name: stem.to_string(),
            sidecar: serde_json::from_slice(&sidecar).expect("sample sidecar is JSON"),
            content,
        }
    }
}

/// `<mini-N@remote.test>`.
pub fn message_id(n: usize) -> String {
    format!("<mini-{n}@remote.test>")
}

/// `n` messages, the i-th to `recipients(i)`.
pub fn plain_spool(n: usize, recipients: impl Fn(usize) -> Vec<String>) -> Vec<Mail> {
    (1..=n)
        .map(|i| {
            let r = recipients(i);
            let refs: Vec<&str> = r.iter().map(String::as_str).collect();
            Mail::plain(i, &refs)
        })
        .collect()
}

/// Writes `mails` as `DIR/NAME.eml` + `DIR/NAME.json`; returns `DIR`.
pub fn write_spool(dir: &Path, mails: &[Mail]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("spool dir");
    for m in mails {
        std::fs::write(dir.join(format!("{}.eml", m.name)), &m.content).expect("write .eml");
        let sidecar = serde_json::to_vec_pretty(&m.sidecar).expect("sidecar JSON");
        std::fs::write(dir.join(format!("{}.json", m.name)), sidecar).expect("write .json");
    }
    dir.to_path_buf()
}

/// A mini spool's run arguments: `--json run`, `--incident` (`TestIncident::deliver_all()`, written into
/// the temp dir), `--store`, `--outbox`, `--now`, then `extra`.
pub fn run_args(cli: &super::Cli, store: &str, extra: &[&str]) -> Vec<String> {
    let incident = super::incident::TestIncident::deliver_all().write(cli.path());
    let mut args: Vec<String> = vec![
        "--json".into(),
        "run".into(),
        "--incident".into(),
        incident.display().to_string(),
        "--store".into(),
        store.into(),
        "--outbox".into(),
        cli.outbox().display().to_string(),
        "--now".into(),
        super::NOW.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Writes `mails` into `spool/` of the temp dir and ingests them (expected to succeed).
#[track_caller]
pub fn ingest(cli: &super::Cli, mails: &[Mail]) {
    let spool = write_spool(&cli.at("spool"), mails);
    let out = cli.run(&["ingest".as_ref(), spool.as_os_str()]);
    super::check(&out, 0);
}

/// How many of `files` contain `needle` (a Message-ID).
pub fn copies_of(files: &[Vec<u8>], needle: &str) -> usize {
    files
        .iter()
        .filter(|f| f.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .count()
}

/// One row of the ledger's audit trail.
#[derive(Debug, Clone)]
pub struct LedgerEvent {
    pub queue_id: String,
    pub address: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub detail: Option<String>,
}

/// Every event, recipient by recipient in ledger order, each one's oldest first
/// (read-only).
#[track_caller]
pub fn ledger_events(ledger: &Path) -> Vec<LedgerEvent> {
    let read = super::read_ledger(ledger);
    let mut out = Vec::new();
    for work in super::ledger_messages(ledger) {
        for r in &work.recipients {
            for e in read.events_of(r.id).expect("read events") {
                out.push(LedgerEvent {
                    queue_id: work.message.queue_id.clone(),
                    address: r.address.clone(),
                    from_state: e.from.map(|s| s.as_str().to_string()),
                    to_state: e.to.as_str().to_string(),
                    detail: e.detail,
                });
            }
        }
    }
    out
}

/// Per (queue id, address): the states it went through, in order.
pub fn state_paths(ledger: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in ledger_events(ledger) {
        out.entry((e.queue_id, e.address))
            .or_default()
            .push(e.to_state);
    }
    out
}

/// The parsed `dsn-N.eml` files of an outbox, keyed by file name.
pub fn outbox_dsns(outbox: &Path) -> BTreeMap<String, String> {
    super::list_files(outbox)
        .into_iter()
        .filter(|f| f.ends_with(".eml"))
        .map(|f| {
            let bytes = std::fs::read(outbox.join(&f)).expect("read DSN");
            (f, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect()
}

/// The per-recipient blocks of a DSN's `message/delivery-status` part, as header maps
/// (field names lowercased, folded lines joined).
pub fn dsn_recipient_fields(dsn: &str) -> Vec<BTreeMap<String, String>> {
    let text = dsn.replace("\r\n", "\n");
    let Some(start) = text.find("Content-Type: message/delivery-status") else {
        return Vec::new();
    };
    let part = &text[start..];
    // Part headers, a blank line, the per-message block, then one block per recipient,
    // all before the next boundary.
    let end = part.find("\n--").unwrap_or(part.len());
    let blocks: Vec<&str> = part[..end].split("\n\n").skip(2).collect();
    blocks
        .iter()
        .map(|b| header_map(b))
        .filter(|m| m.contains_key("final-recipient"))
        .collect()
}

fn header_map(block: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last
                && let Some(v) = out.get_mut(k)
            {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            out.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    out
}
