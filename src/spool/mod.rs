//! Spool readers: one per format, all yielding `SpoolItem`s one at a time.
//!
//! Readers never write to the spool and never hold more than one message in memory.
//! What cannot be read becomes `SpoolItem::Quarantined` with a reason naming the file;
//! only a spool that cannot be opened at all is an `Err`.

mod detect;
pub mod eml;
pub mod envelope;
pub mod exim;
mod file;
pub mod maildir;
pub mod mbox;
pub mod postfix;
pub mod screen;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, FixedOffset};
use sha2::{Digest, Sha256};

use crate::address::{Notify, ReturnContent, ReversePath};
use crate::line_ends;
use crate::shard::ShardSpec;

pub use detect::detect;
pub use file::{FileError, Links, open_file, open_regular, read_bounded, read_regular};

/// The spool formats spoolreplay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpoolFormat {
    Maildir,
    Mbox,
    Eml,
    /// A Postfix queue directory (`deferred/`, `hold/`, `active/`, `incoming/`, `maildrop/`).
    Postfix,
    /// An Exim spool (`input/` with `-H`/`-D` files).
    Exim,
}

impl SpoolFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolFormat::Maildir => "maildir",
            SpoolFormat::Mbox => "mbox",
            SpoolFormat::Eml => "eml",
            SpoolFormat::Postfix => "postfix",
            SpoolFormat::Exim => "exim",
        }
    }
}

impl fmt::Display for SpoolFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpoolFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "maildir" => Ok(SpoolFormat::Maildir),
            "mbox" => Ok(SpoolFormat::Mbox),
            "eml" => Ok(SpoolFormat::Eml),
            "postfix" => Ok(SpoolFormat::Postfix),
            "exim" => Ok(SpoolFormat::Exim),
            other => Err(format!(
                "unknown spool format `{other}` (expected maildir, mbox, eml, postfix or exim)"
            )),
        }
    }
}

/// Where a message lives in the spool, precise enough to read its bytes again at delivery
/// time. For one-file-per-message formats `offset` is 0 (or the length of a leading mbox
/// `From ` line, which is framing) and `offset + len` the file length; for mbox they
/// delimit the message (after its `From ` line) inside the mbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub format: SpoolFormat,
    /// Absolute path of the file holding the message.
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format {
            SpoolFormat::Mbox => write!(f, "{} (byte {})", self.path.display(), self.offset),
            _ => write!(f, "{}", self.path.display()),
        }
    }
}

/// Which part of the input an envelope field was taken from (recorded in the ledger, so an
/// operator can tell a real envelope from a guessed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldSource {
    /// The `.json` envelope sidecar of an `.eml` file.
    Sidecar,
    /// The `From ` separator line of an mbox message.
    MboxFromLine,
    ReturnPath,
    XOriginalTo,
    DeliveredTo,
    EnvelopeTo,
    /// The newest `Received:` header's date.
    Received,
    /// The `Date:` header.
    DateHeader,
    /// The file's modification time.
    FileTime,
    /// The MTA's own queue file (Postfix queue file, Exim `-H` file): the real envelope.
    QueueFile,
}

impl FieldSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldSource::Sidecar => "sidecar",
            FieldSource::MboxFromLine => "mbox-from-line",
            FieldSource::ReturnPath => "return-path",
            FieldSource::XOriginalTo => "x-original-to",
            FieldSource::DeliveredTo => "delivered-to",
            FieldSource::EnvelopeTo => "envelope-to",
            FieldSource::Received => "received",
            FieldSource::DateHeader => "date",
            FieldSource::FileTime => "file-time",
            FieldSource::QueueFile => "queue-file",
        }
    }

    /// All sources, to read back what the ledger recorded.
    const ALL: [FieldSource; 10] = [
        FieldSource::Sidecar,
        FieldSource::MboxFromLine,
        FieldSource::ReturnPath,
        FieldSource::XOriginalTo,
        FieldSource::DeliveredTo,
        FieldSource::EnvelopeTo,
        FieldSource::Received,
        FieldSource::DateHeader,
        FieldSource::FileTime,
        FieldSource::QueueFile,
    ];

    /// The source recorded as `name` (`as_str`), if it is one.
    pub fn from_name(name: &str) -> Option<FieldSource> {
        FieldSource::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Where the field came from, as an operator reads it.
    pub fn describe(self) -> &'static str {
        match self {
            FieldSource::Sidecar => "the .json sidecar",
            FieldSource::MboxFromLine => "the mbox `From ` line",
            FieldSource::ReturnPath => "the Return-Path header",
            FieldSource::XOriginalTo => "the X-Original-To header",
            FieldSource::DeliveredTo => "the Delivered-To header",
            FieldSource::EnvelopeTo => "the Envelope-To header",
            FieldSource::Received => "the newest Received header",
            FieldSource::DateHeader => "the Date header",
            FieldSource::FileTime => "the file's modification time",
            FieldSource::QueueFile => "the MTA's queue file",
        }
    }
}

/// What the MTA had already done for a recipient before the spool was copied: such
/// recipients are recorded, never replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// Delivered by the MTA (Postfix `D` record, Exim non-recipients tree or `-J` journal).
    Delivered,
    /// Cancelled (Postfix `/` record, e.g. removed by a milter).
    Cancelled,
}

/// One envelope recipient with its RFC 3461 parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Exactly as in the envelope (case preserved, no angle brackets).
    pub address: String,
    /// ORCPT as `addr-type;value`, already xtext-decoded.
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
    /// `Some` when the MTA already settled this recipient.
    pub prior: Option<Prior>,
}

impl Recipient {
    pub fn plain(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            orcpt: None,
            notify: None,
            prior: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub sender: ReversePath,
    pub sender_from: FieldSource,
    /// Never empty: a message without recipients is quarantined.
    pub recipients: Vec<Recipient>,
    pub recipients_from: FieldSource,
    pub arrival: DateTime<FixedOffset>,
    pub arrival_from: FieldSource,
    /// RFC 3461 ENVID, xtext-decoded.
    pub envid: Option<String>,
    pub ret: Option<ReturnContent>,
}

/// A message read from the spool, with its envelope.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub source: SourceRef,
    /// The spool's own name for the message (Maildir unique name, `.eml` stem, or
    /// `mbox#N`), shown to operators.
    pub queue_id: String,
    pub envelope: Envelope,
    /// The message bytes as spooled, framing removed (an mbox `From ` line, `>From `
    /// unquoted); line ends as spooled: the backends write them by `line_ends`.
    pub content: Vec<u8>,
    /// The modification time of the file holding the message, as the reader saw it when
    /// it opened the file (`screen` checks the arrival against it).
    pub file_time: Option<DateTime<FixedOffset>>,
    /// The MTA queue the message was found in (`deferred`, `hold`, `input` …), if any.
    pub queue_name: Option<String>,
    /// The MTA itself was holding the message (Postfix `hold/`, Exim frozen).
    pub mta_hold: bool,
}

impl QueuedMessage {
    /// The content hash by the rule of the ledger it goes into. Under the old
    /// `HashRule::Bytes` the identity is also the old one: a leading `From ` line that the
    /// reader cut off is counted back in (source from offset 0), so the same file read
    /// again matches its row instead of becoming a second message.
    pub fn identify(&mut self, rule: HashRule) -> ContentHash {
        match rule {
            HashRule::LfForm => ContentHash::of_message(&self.content),
            HashRule::Bytes => {
                let one_file =
                    matches!(self.source.format, SpoolFormat::Maildir | SpoolFormat::Eml);
                if one_file
                    && self.source.offset > 0
                    && let Ok(whole) = std::fs::read(&self.source.path)
                    && whole.ends_with(&self.content)
                {
                    self.source.offset = 0;
                    self.source.len = whole.len() as u64;
                    return ContentHash::of(&whole);
                }
                ContentHash::of(&self.content)
            }
        }
    }
}

/// How a ledger takes content hashes (recorded in it, `ledger::meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashRule {
    /// SHA-256 of the bytes as read, `From ` line included: ledgers made before line ends
    /// were normalised keep it, so a spool read again matches the rows they hold.
    Bytes,
    /// SHA-256 of the LF form (`line_ends::to_lf`): mail that differs only in line ends
    /// (saved once with LF, once with CRLF) is one content.
    LfForm,
}

/// SHA-256 of a message's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// SHA-256 of these exact bytes.
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(Sha256::digest(bytes).into())
    }

    /// The content hash of a message (`HashRule::LfForm`): SHA-256 of its LF form, fed in
    /// pieces (Postfix content is CRLF: a copy would double ingest's memory and time).
    pub fn of_message(content: &[u8]) -> ContentHash {
        let mut hasher = Sha256::new();
        line_ends::lf_pieces(content, |piece| hasher.update(piece));
        ContentHash(hasher.finalize().into())
    }

    /// Whether `content` is what `hex` was taken over, by either rule (a ledger's rows
    /// were hashed by one of them; the bytes as read must match it).
    pub fn matches(hex: &str, content: &[u8]) -> bool {
        ContentHash::of_message(content).to_hex() == hex
            || (content.contains(&b'\r') && ContentHash::of(content).to_hex() == hex)
    }

    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// An item that could not be read as a message.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub source: SourceRef,
    /// What was wrong, in words an operator understands (names no path: `source` does).
    pub reason: String,
}

#[derive(Debug)]
pub enum SpoolItem {
    Message(QueuedMessage),
    Quarantined(Quarantined),
}

/// A stream of spool items. Boxed so `cmd::ingest` does not care about the format.
pub type SpoolReader = Box<dyn Iterator<Item = SpoolItem> + Send>;

/// Failures to open a spool at all (a single bad item is quarantined instead).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool `{0}` does not exist")]
    Missing(PathBuf),
    #[error("`{path}` is not a spool spoolreplay can read: {why}")]
    Unrecognized { path: PathBuf, why: String },
    #[error("cannot read spool `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which items a reader yields: every one, or one shard's. Readers ask before they open
/// an item's file, so a shard never reads the others' files. Clones share the count of
/// items skipped as belonging to other shards (the reader runs on its own thread).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    shard: Option<ShardSpec>,
    skipped: Arc<AtomicU64>,
}

impl Selection {
    /// Every item (no `--shard`).
    pub fn all() -> Selection {
        Selection::default()
    }

    pub fn shard(spec: ShardSpec) -> Selection {
        Selection {
            shard: Some(spec),
            skipped: Arc::default(),
        }
    }

    /// Whether the item with this shard key is read; counts it when it is not.
    pub fn takes(&self, key: &str) -> bool {
        self.count_unless(self.shard.is_none_or(|s| s.owns(key)))
    }

    /// Whether an item without a key (a folder that cannot be listed) is reported here.
    pub fn takes_keyless(&self) -> bool {
        self.count_unless(self.shard.is_none_or(|s| s.owns_keyless()))
    }

    fn count_unless(&self, taken: bool) -> bool {
        if !taken {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Items left to the other shards so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Opens `path` as a spool of `format` (or detects it when `None`).
pub fn open(
    path: &Path,
    format: Option<SpoolFormat>,
) -> Result<(SpoolFormat, SpoolReader), SpoolError> {
    open_selected(path, format, Selection::all())
}

/// Opens `path` as a spool of `format` (or detects it), yielding only the items that
/// `selection` takes.
pub fn open_selected(
    path: &Path,
    format: Option<SpoolFormat>,
    selection: Selection,
) -> Result<(SpoolFormat, SpoolReader), SpoolError> {
    let format = match format {
        Some(_) if is_missing(path) => return Err(SpoolError::Missing(path.to_path_buf())),
        Some(f) => f,
        None => detect(path)?,
    };
    let reader: SpoolReader = match format {
        SpoolFormat::Maildir => Box::new(maildir::read_selected(path, selection)?),
        SpoolFormat::Mbox => Box::new(mbox::read_selected(path, selection)?),
        SpoolFormat::Eml => Box::new(eml::read_selected(path, selection)?),
        SpoolFormat::Postfix => Box::new(postfix::read_selected(path, selection)?),
        SpoolFormat::Exim => Box::new(exim::read_selected(path, selection)?),
    };
    // Every format's messages pass the same checks (sender, arrival) on the way out.
    Ok((format, Box::new(reader.map(screen::screen))))
}

/// Reads a message's bytes again from the spool (at delivery or bounce time), exactly as
/// the reader produced them at ingest.
pub fn read_content(source: &SourceRef) -> std::io::Result<Vec<u8>> {
    match source.format {
        SpoolFormat::Mbox => mbox::read_content(source),
        SpoolFormat::Maildir | SpoolFormat::Eml => read_file_content(source),
        SpoolFormat::Postfix => postfix::read_content(source),
        SpoolFormat::Exim => exim::read_content(source),
    }
}

/// A whole-file message from `offset` (past a leading `From ` line). A file whose length
/// is not `offset + len` any more is returned whole: it changed, and the content hash
/// check says so.
fn read_file_content(source: &SourceRef) -> std::io::Result<Vec<u8>> {
    let mut bytes = read_regular(&source.path)?.0;
    let offset = usize::try_from(source.offset).map_err(std::io::Error::other)?;
    if source.offset.checked_add(source.len) == Some(bytes.len() as u64) {
        bytes.drain(..offset);
    }
    Ok(bytes)
}

fn is_missing(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Reads one whole-file message (Maildir, `.eml`): anything wrong with it is quarantined.
fn file_item(
    path: &Path,
    format: SpoolFormat,
    queue_id: String,
    given: Option<envelope::GivenEnvelope>,
) -> SpoolItem {
    let source = |len: u64| SourceRef {
        format,
        path: path.to_path_buf(),
        offset: 0,
        len,
    };
    let quarantine = |len: u64, reason: String| {
        SpoolItem::Quarantined(Quarantined {
            source: source(len),
            reason,
        })
    };
    let (mut content, metadata) = match read_regular(path) {
        Ok(read) => read,
        Err(e) => return quarantine(0, e.to_string()),
    };
    if content.is_empty() {
        return quarantine(0, "file is empty".into());
    }
    // A leading mbox `From ` line (left by converters and mail clients) is framing, not
    // content: it gives the envelope what it can, and the source starts after it.
    let framing = leading_from_line_len(&content);
    let from_line = (framing > 0).then(|| mbox::parse_from_line(&content[..framing]));
    content.drain(..framing);
    let len = content.len() as u64;
    let source = |len: u64| SourceRef {
        offset: framing as u64,
        ..source(len)
    };
    if content.is_empty() {
        return SpoolItem::Quarantined(Quarantined {
            source: source(0),
            reason: "file holds only an mbox `From ` line, no message".into(),
        });
    }
    let hints = envelope::Hints {
        given,
        from_line,
        file_time: envelope::file_time(&metadata),
    };
    match envelope::derive(&content, &hints) {
        Ok(envelope) => SpoolItem::Message(QueuedMessage {
            source: source(len),
            queue_id,
            envelope,
            content,
            file_time: hints.file_time,
            queue_name: None,
            mta_hold: false,
        }),
        Err(reason) => SpoolItem::Quarantined(Quarantined {
            source: source(len),
            reason,
        }),
    }
}

/// The length of a leading mbox `From ` line with its line end; 0 when there is none.
pub fn leading_from_line_len(content: &[u8]) -> usize {
    if content.starts_with(b"From ") {
        line_ends::first_line_len(content)
    } else {
        0
    }
}
