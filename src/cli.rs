//! What the user typed: clap derive only. `config.rs` turns it into a validated `Config`;
//! nothing below `cmd/` sees clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "spoolreplay",
    version,
    about = "Replay mail spooled during a mail-store outage into the restored store",
    long_about = "Replay mail spooled during a mail-store outage into the restored store.\n\n\
        ingest reads a spool into the ledger; report shows what run would do; run delivers, \
        bounces what expired and records every outcome; status and bounces show where things stand.",
    after_help = crate::exit::Exit::help_table()
)]
pub struct Cli {
    /// The SQLite ledger that records every message and decision; `report` takes several
    /// (--ledger a.db --ledger b.db) and reports on them as one
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "spoolreplay.db",
        action = clap::ArgAction::Append
    )]
    pub ledger: Vec<PathBuf>,

    /// Print JSON Lines on stdout (one object per line, with a "type" field)
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only what was asked for and errors: no progress, notes, warnings or summaries
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Say more (repeat for more detail)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a spool into the ledger (the spool is never modified)
    #[command(
        after_help = "Example:\n  spoolreplay ingest fixtures/sample-spool\n  spoolreplay ingest --format mbox /backup/mx1/inbox.mbox\n  \
            spoolreplay --ledger mx1-shard-2.db ingest --shard 2/4 /backup/mx1/postfix"
    )]
    Ingest(IngestArgs),

    /// Dry run: what `run` would do, per window and disposition; changes nothing
    #[command(
        after_help = "Example:\n  spoolreplay report --incident fixtures/incident.toml --now 2023-01-27T09:00:00+01:00\n  \
            spoolreplay report --incident fixtures/incident.toml --format csv > plan.csv\n  \
            spoolreplay report --incident fixtures/incident.toml --html incident.html\n  \
            spoolreplay report --affected --format csv > affected.csv\n  \
            spoolreplay --ledger mx1.db --ledger mx2.db report --incident fixtures/incident.toml"
    )]
    Report(ReportArgs),

    /// Deliver to the restored store in throttled batches, and write DSNs for what expired
    #[command(
        after_help = "Example:\n  spoolreplay run --incident fixtures/incident.toml --store maildir:/tmp/restored \\\n      --outbox /tmp/bounces --rate 500/s --batch-size 100"
    )]
    Run(Box<RunArgs>),

    /// Where every recipient stands: counts per state and window, and what remains
    #[command(
        after_help = "Example:\n  spoolreplay status\n  spoolreplay --json status\n  spoolreplay status --message 0D21CC4250"
    )]
    Status(StatusArgs),

    /// List the DSNs made and owed, print, preview, send or write them
    #[command(
        after_help = "Example:\n  spoolreplay bounces\n  spoolreplay bounces --show 3\n  spoolreplay bounces send --relay smtp://127.0.0.1:25"
    )]
    Bounces(BouncesArgs),

    /// Export the audit trail: one JSON line per recipient with every state change
    #[command(
        after_help = "Example:\n  spoolreplay audit > audit.jsonl\n  spoolreplay audit --recipient anna.schmidt@example.net\n  \
            spoolreplay audit --window rejected-550 --state bounced"
    )]
    Audit(AuditArgs),

    /// Pause, resume or watch the runs that share a `--cluster` address
    #[command(
        after_help = "Example:\n  spoolreplay cluster status --cluster redis://10.0.0.5/mx-recovery\n  \
            spoolreplay cluster pause --cluster redis://10.0.0.5/mx-recovery"
    )]
    Cluster(ClusterArgs),
    /// Steer the `run` working on this ledger: pause, resume, or change its pace
    #[command(
        after_help = "Example:\n  spoolreplay control pause\n  spoolreplay control rate 50/s\n  spoolreplay control resume"
    )]
    Control {
        #[command(subcommand)]
        action: ControlAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ControlAction {
    /// Stop handing messages to the store (what is in flight finishes) until `resume`
    Pause,
    /// Hand messages to the store again
    Resume,
    /// Set the pace's ceiling, e.g. 50/s (the run adapts below it as before)
    Rate {
        #[arg(value_name = "N/s")]
        rate: String,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show one message (by its queue id): where it came from and each recipient's state,
    /// last reply and DSN
    #[arg(long, value_name = "QUEUE_ID")]
    pub message: Option<String>,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The spool: a Postfix queue directory (a copy of /var/spool/postfix or one of its
    /// queue folders), an Exim spool (/var/spool/exim4 or its input/), a Maildir folder,
    /// an mbox file, or a folder of .eml files (subfolders too)
    #[arg(value_name = "SPOOL")]
    pub spool: PathBuf,

    /// The spool's format: auto (detect), postfix, exim, maildir, mbox or eml
    #[arg(long, default_value = "auto", value_name = "FORMAT")]
    pub format: String,

    /// Read only shard I of N (1 <= I <= N), split by a stable key of each item (queue id,
    /// file name, mbox offset), into a ledger that holds that shard alone
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
}

#[derive(Debug, Args)]
pub struct Clock {
    /// The time to classify against (RFC 3339), for what-ifs and tests; default: now
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct BounceGuard {
    /// Stop before any DSN when more than this percentage of the open messages would be
    /// bounced or expired (a wrong --now or queue_lifetime bounces everything); 100: no limit
    #[arg(
        long,
        value_name = "PERCENT",
        default_value_t = crate::plan::DEFAULT_MAX_BOUNCE_SHARE,
        value_parser = clap::value_parser!(u8).range(0..=100)
    )]
    pub max_bounce_share: u8,
}

#[derive(Debug, Args)]
pub struct Pace {
    /// At most this many messages per time unit (N/s, N/m, N/h); default: unlimited
    #[arg(long, value_name = "N/s")]
    pub rate: Option<String>,

    /// Messages taken from the ledger at a time (each is recorded as soon as the store answers)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub batch_size: usize,

    /// Pause between batches (e.g. 2s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub pause: String,

    /// At most this many bytes per second (e.g. 20MB/s, 500KB/s)
    #[arg(long, value_name = "BYTES/s")]
    pub max_bytes_rate: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The incident file (TOML); not needed with --affected
    #[arg(long, value_name = "FILE", required_unless_present = "affected")]
    pub incident: Option<PathBuf>,

    #[command(flatten)]
    pub clock: Clock,

    #[command(flatten)]
    pub guard: BounceGuard,

    #[command(flatten)]
    pub pace: Pace,

    /// The `run --order` to project for: arrival (oldest first), newest, or fair (when
    /// every mailbox has had its first message)
    #[arg(long, value_name = "ORDER", default_value = "arrival")]
    pub order: String,

    /// How many rows of the domain, age, anomaly and quarantine lists to show
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Output format: table, json (JSON Lines, like --json) or csv
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,

    /// Affected mailboxes (delivered late, bounced, held, pending, uncertain) and the sender
    /// domains that were sent bounces, instead of the plan
    #[arg(long)]
    pub affected: bool,

    /// Also write a self-contained HTML incident report (charts, no JavaScript) to FILE
    #[arg(long, value_name = "FILE", conflicts_with = "affected")]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only recipients of messages in this window (as the last `run` classified them)
    #[arg(long, value_name = "NAME")]
    pub window: Option<String>,

    /// Only recipients now in this state (pending, delivered, bounced, held, …)
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,

    /// Only this recipient address (case-insensitive)
    #[arg(long, value_name = "ADDRESS")]
    pub recipient: Option<String>,

    /// Only mail from this envelope sender (case-insensitive; "" or "<>" is the null sender)
    #[arg(long, value_name = "ADDRESS")]
    pub sender: Option<String>,

    /// Only the message with this queue id
    #[arg(long, value_name = "ID")]
    pub queue_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The incident file (TOML)
    #[arg(long, value_name = "FILE")]
    pub incident: PathBuf,

    /// The restored store: maildir:DIR, lmtp://HOST[:PORT], lmtp:/SOCKET, smtp://HOST[:PORT],
    /// smtp+starttls://HOST[:PORT], smtps://HOST[:PORT], imap://HOST[:PORT],
    /// imap+starttls://HOST[:PORT] or imaps://HOST[:PORT] (IMAP: credentials from
    /// SPOOLREPLAY_IMAP_USER/SPOOLREPLAY_IMAP_PASSWORD or SPOOLREPLAY_IMAP_CREDENTIALS)
    #[arg(long, value_name = "TARGET")]
    pub store: String,

    /// Write DSNs here as .eml files with a .json envelope; without it DSNs stay in the ledger
    #[arg(long, value_name = "DIR")]
    pub outbox: Option<PathBuf>,

    /// Return only the headers of originals larger than this many bytes
    #[arg(long, value_name = "BYTES", default_value_t = 50_000)]
    pub return_limit: usize,

    /// Parallel connections to the store
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub concurrency: usize,

    /// After a lost reply (the store may or may not have the message): redeliver (a
    /// duplicate is possible), hold (nothing until the operator checks) or verify (look in
    /// the store: IMAP and Maildir stores only)
    #[arg(long, value_name = "POLICY", default_value = "redeliver")]
    pub uncertain: String,

    /// With an LMTP or SMTP store: the same mailboxes over IMAP (imap://, imaps://,
    /// imap+starttls://), where `--uncertain verify` and crash recovery look for a copy;
    /// each copy then goes in its own transaction with a trace field
    #[arg(long, value_name = "TARGET")]
    pub verify_store: Option<String>,

    /// First wait before retrying deferred mail; doubled after each deferral
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    pub retry_delay: String,

    /// Longest wait between retries of deferred mail
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub retry_max: String,

    /// Warn senders (an `Action: delayed` DSN, once per recipient) about mail held or
    /// deferred longer than this, e.g. 24h; off by default
    #[arg(long, value_name = "DURATION")]
    pub warn_after: Option<String>,

    /// Send a copy of bounces that could not be replayed (null sender) to this address
    #[arg(long, value_name = "ADDRESS")]
    pub postmaster: Option<String>,

    /// Accept any TLS certificate from an SMTP store (a test server or a private network
    /// you trust); credentials come from SPOOLREPLAY_SMTP_USER/SPOOLREPLAY_SMTP_PASSWORD or
    /// the file named by SPOOLREPLAY_SMTP_CREDENTIALS
    #[arg(long)]
    pub insecure_tls: bool,

    /// SMTP/LMTP: how long to wait for a connection
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub connect_timeout: String,

    /// SMTP/LMTP: how long to wait for each reply as a whole, the greeting included (the
    /// reply after the message's final dot gets twice as long); RFC 5321 asks for 5 minutes
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub reply_timeout: String,

    /// How long the store may stay unreachable mid-run before the run stops (exit 75)
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub store_timeout: String,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics while the run goes, e.g.
    /// 127.0.0.1:9464
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// The store counts as unhealthy (wait, probe with one message at a time, exit 75
    /// after --store-timeout) when this many consecutive recipients got a 4xx; 0: never
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub breaker_recipients: usize,

    /// … across at least this many distinct mailboxes (one full mailbox is not the store)
    #[arg(long, value_name = "M", default_value_t = 5)]
    pub breaker_mailboxes: usize,

    /// Delivery order: arrival (oldest first), newest (newest first), or fair
    /// (round-robin across mailboxes: everyone's first message before anyone's second)
    #[arg(long, value_name = "ORDER", default_value = "arrival")]
    pub order: String,

    #[command(flatten)]
    pub clock: Clock,

    #[command(flatten)]
    pub guard: BounceGuard,

    #[command(flatten)]
    pub pace: Pace,

    /// Share --rate and --max-bytes-rate with every run given the same address, as
    /// cluster-wide totals, with a shared back-off (redis://HOST[:PORT][/NAME], rediss://
    /// for TLS; the password from SPOOLREPLAY_REDIS_PASSWORD or the address)
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// With --cluster, while the coordinator is away: `best-effort` goes on and records
    /// that duplicates across ledgers were not checked; `strict` waits (exit 75 after
    /// --store-timeout)
    #[arg(
        long,
        value_name = "MODE",
        default_value = "best-effort",
        requires = "cluster"
    )]
    pub cluster_dedupe: String,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,

    /// The cluster's address, as given to `run --cluster`
    #[arg(long, value_name = "URL", global = true)]
    pub cluster: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Members finish what is in flight and hand nothing more to the store until `resume`
    Pause,
    /// Members go on where they paused
    Resume,
    /// Every member's progress and heartbeat, and the total
    Status,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BouncesArgs {
    /// Print the DSN with this id (same as `bounces show ID`)
    #[arg(long, value_name = "ID")]
    pub show: Option<i64>,

    #[command(subcommand)]
    pub action: Option<BouncesAction>,
}

#[derive(Debug, Subcommand)]
pub enum BouncesAction {
    /// List the DSNs made and the ones still owed (the default)
    #[command(
        after_help = "Example:\n  spoolreplay bounces list\n  spoolreplay --json bounces list"
    )]
    List,

    /// Print one DSN as it is sent
    #[command(
        after_help = "Example:\n  spoolreplay bounces show 3\n  spoolreplay bounces show 3 > dsn-3.eml"
    )]
    Show {
        /// The DSN's id, as `bounces list` shows it
        #[arg(value_name = "ID")]
        id: i64,
    },

    /// Show the DSN that would be made for a message, without recording anything
    #[command(
        after_help = "Example:\n  spoolreplay bounces preview --message 0009-personal --incident fixtures/incident.toml --now 2023-01-28T06:00:00+01:00"
    )]
    Preview {
        /// The message's queue id (as `report` and `status` show it)
        #[arg(long, value_name = "QUEUE_ID")]
        message: String,

        /// The incident file (TOML)
        #[arg(long, value_name = "FILE")]
        incident: PathBuf,

        #[command(flatten)]
        clock: Clock,

        /// Return only the headers of originals larger than this many bytes
        #[arg(long, value_name = "BYTES", default_value_t = 50_000)]
        return_limit: usize,
    },

    /// Send the DSNs not sent yet through a relay, from <> (resumable, never twice)
    #[command(
        after_help = "Example:\n  spoolreplay bounces send --relay smtp://127.0.0.1:25 --rate 20/s"
    )]
    Send {
        /// The relay: smtp://HOST[:PORT], smtp+starttls://… or smtps://…
        #[arg(long, value_name = "URL")]
        relay: String,

        /// At most this many DSNs per time unit (N/s, N/m, N/h); default 10/s. Halved
        /// when the relay answers 4xx (421 included), then climbing back
        #[arg(long, value_name = "N/s")]
        rate: Option<String>,

        /// At most this many DSNs per time unit to one destination domain
        #[arg(long, value_name = "N/s")]
        per_domain_rate: Option<String>,

        /// Accept any TLS certificate from the relay
        #[arg(long)]
        insecure_tls: bool,

        /// How long to wait for a connection to the relay
        #[arg(long, value_name = "DURATION", default_value = "30s")]
        connect_timeout: String,

        /// How long to wait for each of the relay's replies, all of it (the reply after the
        /// final dot gets twice as long)
        #[arg(long, value_name = "DURATION", default_value = "5m")]
        reply_timeout: String,

        /// Send again DSNs whose sending was interrupted after the data went out (the
        /// sender may get a DSN twice)
        #[arg(long)]
        resend_uncertain: bool,

        /// Serve Prometheus metrics at http://ADDR:PORT/metrics while sending
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },

    /// Write the DSNs not yet written as .eml files with a .json envelope
    #[command(after_help = "Example:\n  spoolreplay bounces write --outbox /var/tmp/bounces")]
    Write {
        /// The folder to write them to (created if missing); each DSN is dsn-N.eml with its
        /// envelope in dsn-N.json
        #[arg(long, value_name = "DIR")]
        outbox: PathBuf,
    },
}
