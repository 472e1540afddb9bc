//! The validated configuration. `Config::from_cli` checks every option once and turns it
//! into types; a bad option is a usage error (64) naming the option.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, FixedOffset};

use crate::cli::{self, Cli};
use crate::cluster::ClusterUrl;
use crate::deliver::imap::{self, ImapCredentials, ImapTarget};
use crate::deliver::smtp::{self, SmtpCredentials, SmtpTarget};
use crate::deliver::target::Credentials;
pub use crate::deliver::target::StoreTarget;
use crate::deliver::wire::Timeouts;
use crate::exit::{Exit, Failure};
use crate::incident::{self, Incident};
use crate::ledger::RcptState;
use crate::ledger::audit::AuditFilter;
pub use crate::pace::PaceConfig;
use crate::replay::{RetryPolicy, UncertainPolicy};
use crate::report::sheet::Format;
pub use crate::report::{Output, Verbosity};
use crate::shard::ShardSpec;
use crate::spool::SpoolFormat;
use crate::throttle::RateSpec;

#[derive(Debug)]
pub struct Config {
    pub ledger: PathBuf,
    pub output: Output,
    pub command: CommandConfig,
}

#[derive(Debug)]
pub enum CommandConfig {
    Ingest(IngestConfig),
    Report(ReportConfig),
    Run(Box<RunConfig>),
    Status {
        message: Option<String>,
    },
    Bounces(BouncesConfig),
    Audit(AuditConfig),
    Control(crate::ledger::Steer),
    Cluster {
        url: ClusterUrl,
        action: cli::ClusterAction,
    },
}

#[derive(Debug)]
pub struct IngestConfig {
    pub spool: PathBuf,
    /// `None`: detect.
    pub format: Option<SpoolFormat>,
    /// `None`: the whole spool.
    pub shard: Option<ShardSpec>,
}

#[derive(Debug)]
pub struct ReportConfig {
    /// One or more; several are reported on as one (one per MX host, or per shard).
    pub ledgers: Vec<PathBuf>,
    /// Always present for the plan; `None` only with `--affected`.
    pub incident: Option<Incident>,
    pub now: DateTime<FixedOffset>,
    /// True when `--now` fixed the clock.
    pub fixed_clock: bool,
    /// `--max-bounce-share`: the plan warns above it, as `run` would refuse.
    pub max_bounce_share: u8,
    pub pace: PaceConfig,
    /// `--order`: the projection says what the order means.
    pub order: crate::ledger::DeliveryOrder,
    pub top: usize,
    pub format: Format,
    pub affected: bool,
    pub html: Option<PathBuf>,
}

/// The filters of `audit`.
#[derive(Debug)]
pub struct AuditConfig {
    pub filter: AuditFilter,
}

#[derive(Debug)]
pub struct RunConfig {
    pub incident: Incident,
    pub now: DateTime<FixedOffset>,
    /// True when `--now` fixed the clock.
    pub fixed_clock: bool,
    /// `--max-bounce-share`: refuse a run bouncing or expiring more than this percentage.
    pub max_bounce_share: u8,
    pub store: StoreTarget,
    pub outbox: Option<PathBuf>,
    pub return_limit: usize,
    pub pace: PaceConfig,
    /// `--cluster`: the pace is shared with the other runs at this address.
    pub cluster: Option<ClusterUrl>,
    /// `--cluster-dedupe strict`.
    pub cluster_strict: bool,
    pub concurrency: usize,
    pub uncertain: UncertainPolicy,
    pub retry: RetryPolicy,
    /// SMTP AUTH credentials, from the environment or a file (never the command line).
    pub credentials: Option<SmtpCredentials>,
    /// The IMAP store's administrative identity (an `imap://` store or `--verify-store`).
    pub imap_credentials: Option<ImapCredentials>,
    /// `--verify-store`: where an LMTP/SMTP store's copies are looked for over IMAP.
    pub verify_store: Option<ImapTarget>,
    /// Accept any TLS certificate (`--insecure-tls`).
    pub insecure_tls: bool,
    pub warn_after: Option<Duration>,
    pub postmaster: Option<String>,
    /// SMTP/LMTP connect and reply timeouts.
    pub timeouts: Timeouts,
    /// `--metrics`: where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--breaker-recipients`, `--breaker-mailboxes`.
    pub breaker: crate::breaker::BreakerConfig,
    /// `--order`.
    pub order: crate::ledger::DeliveryOrder,
}

#[derive(Debug)]
pub enum BouncesConfig {
    List,
    Show(i64),
    Preview {
        queue_id: String,
        incident: Incident,
        now: DateTime<FixedOffset>,
        return_limit: usize,
    },
    Send {
        relay: SmtpTarget,
        rate: Option<RateSpec>,
        per_domain_rate: Option<RateSpec>,
        credentials: Option<SmtpCredentials>,
        insecure_tls: bool,
        timeouts: Timeouts,
        resend_uncertain: bool,
        metrics: Option<std::net::SocketAddr>,
    },
    Write {
        outbox: PathBuf,
    },
}

/// A `--cluster` address, with the password from `SPOOLREPLAY_REDIS_PASSWORD` if set.
fn cluster_url(s: &str) -> Result<ClusterUrl> {
    let url: ClusterUrl = s.parse().map_err(|e| usage("--cluster", e))?;
    Ok(url.with_password(std::env::var("SPOOLREPLAY_REDIS_PASSWORD").ok()))
}

/// `--uncertain`; `verify` needs a store that can be searched for a copy (IMAP, Maildir).
fn uncertain_policy(policy: &str, store: &str, verify_store: bool) -> Result<UncertainPolicy> {
    match policy {
        "redeliver" => Ok(UncertainPolicy::Redeliver),
        "hold" => Ok(UncertainPolicy::Hold),
        "verify" => match StoreTarget::parse(store) {
            Ok(StoreTarget::Lmtp(_) | StoreTarget::Smtp(_)) if !verify_store => Err(usage(
                "--uncertain",
                "`verify` needs a store that can be searched for a copy: an IMAP store \
                 (imap://, imaps://), a Maildir store, or LMTP/SMTP with \
                 --verify-store imap://… (the same mailboxes over IMAP)",
            )),
            _ => Ok(UncertainPolicy::Verify),
        },
        other => Err(usage(
            "--uncertain",
            format!("`{other}` is not `redeliver`, `hold` or `verify`"),
        )),
    }
}

/// The IMAP administrative identity, required for an IMAP store and ignored otherwise.
fn imap_credentials(store: &str, verify_store: bool) -> Result<Option<ImapCredentials>> {
    if !verify_store && !matches!(StoreTarget::parse(store), Ok(StoreTarget::Imap(_))) {
        return Ok(None);
    }
    let config = |why: String| {
        anyhow::Error::new(
            Failure::new(Exit::Config, format!("IMAP credentials: {why}")).with_hint(format!(
                "set {} and {} to the store's master user or admin (or {} to a file \
                 holding `user:password`)",
                crate::deliver::imap::ENV_USER,
                crate::deliver::imap::ENV_PASSWORD,
                crate::deliver::imap::ENV_FILE
            )),
        )
    };
    match Credentials::from_env(&imap::CREDENTIAL_VARS) {
        Ok(Some(c)) => Ok(Some(c)),
        Ok(None) => Err(config(
            "an IMAP store needs an administrative identity".into(),
        )),
        Err(e) => Err(config(e)),
    }
}

/// `--verify-store`: an IMAP target, only beside an LMTP or SMTP store.
fn verify_store(target: Option<&str>, store: &str) -> Result<Option<ImapTarget>> {
    let Some(target) = target else {
        return Ok(None);
    };
    if !matches!(
        StoreTarget::parse(store),
        Ok(StoreTarget::Lmtp(_) | StoreTarget::Smtp(_))
    ) {
        return Err(usage(
            "--verify-store",
            "only an LMTP or SMTP store needs it (IMAP and Maildir stores are looked in directly)",
        ));
    }
    target
        .parse::<ImapTarget>()
        .map(Some)
        .map_err(|e| usage("--verify-store", e))
}

fn usage(option: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Failure::new(Exit::Usage, format!("{option}: {why}")))
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Config> {
        let output = Output {
            json: cli.json,
            verbosity: match (cli.quiet, cli.verbose) {
                (true, _) => Verbosity::Quiet,
                (false, 0) => Verbosity::Normal,
                (false, n) => Verbosity::Verbose(n),
            },
        };
        let ledger = one_ledger(&cli)?;
        let command = match cli.command {
            cli::Command::Ingest(a) => CommandConfig::Ingest(IngestConfig {
                format: match a.format.as_str() {
                    "auto" => None,
                    other => Some(other.parse().map_err(|e| usage("--format", e))?),
                },
                shard: a
                    .shard
                    .as_deref()
                    .map(|s| s.parse::<ShardSpec>().map_err(|e| usage("--shard", e)))
                    .transpose()?,
                spool: a.spool,
            }),
            cli::Command::Report(a) => CommandConfig::Report(ReportConfig {
                ledgers: cli.ledger,
                format: report_format(a.format.as_deref(), cli.json)?,
                incident: a.incident.as_deref().map(incident::load).transpose()?,
                now: parse_now(a.clock.now.as_deref())?,
                fixed_clock: a.clock.now.is_some(),
                max_bounce_share: a.guard.max_bounce_share,
                pace: pace(&a.pace)?,
                order: a.order.parse().map_err(|e: String| usage("--order", e))?,
                top: a.top,
                affected: a.affected,
                html: a.html,
            }),
            cli::Command::Run(a) => {
                let a = *a;
                CommandConfig::Run(Box::new(RunConfig {
                    incident: incident::load(&a.incident)?,
                    now: parse_now(a.clock.now.as_deref())?,
                    fixed_clock: a.clock.now.is_some(),
                    max_bounce_share: a.guard.max_bounce_share,
                    store: StoreTarget::parse(&a.store).map_err(|e| usage("--store", e))?,
                    outbox: a.outbox,
                    return_limit: a.return_limit,
                    pace: pace(&a.pace)?,
                    cluster: a.cluster.as_deref().map(cluster_url).transpose()?,
                    cluster_strict: match a.cluster_dedupe.as_str() {
                        "strict" => true,
                        "best-effort" => false,
                        _ => {
                            return Err(usage(
                                "--cluster-dedupe",
                                "must be `strict` or `best-effort`",
                            ));
                        }
                    },
                    concurrency: match a.concurrency {
                        0 => return Err(usage("--concurrency", "must be at least 1")),
                        n => n,
                    },
                    uncertain: uncertain_policy(&a.uncertain, &a.store, a.verify_store.is_some())?,
                    // Before the credentials: a misplaced option is the clearer error.
                    verify_store: verify_store(a.verify_store.as_deref(), &a.store)?,
                    imap_credentials: imap_credentials(&a.store, a.verify_store.is_some())?,
                    credentials: Credentials::from_env(&smtp::CREDENTIAL_VARS).map_err(|e| {
                        anyhow::Error::new(Failure::new(
                            Exit::Config,
                            format!("SMTP credentials: {e}"),
                        ))
                    })?,
                    insecure_tls: a.insecure_tls,
                    timeouts: reply_timeouts(&a.connect_timeout, &a.reply_timeout)?,
                    metrics: a.metrics,
                    order: a.order.parse().map_err(|e: String| usage("--order", e))?,
                    breaker: crate::breaker::BreakerConfig {
                        recipients: a.breaker_recipients,
                        mailboxes: a.breaker_mailboxes,
                    },
                    warn_after: a
                        .warn_after
                        .as_deref()
                        .map(|d| duration("--warn-after", d))
                        .transpose()?,
                    postmaster: match a.postmaster {
                        Some(p)
                            if crate::address::Mailbox::parse(&p).is_err()
                                || !p.is_ascii()
                                || p.contains(|c: char| {
                                    c.is_control() || c == ' ' || c == '<' || c == '>'
                                }) =>
                        {
                            return Err(usage(
                                "--postmaster",
                                format!("`{p}` is not a plain address like postmaster@example.net"),
                            ));
                        }
                        other => other,
                    },
                    retry: RetryPolicy {
                        first: duration("--retry-delay", &a.retry_delay)?,
                        max: duration("--retry-max", &a.retry_max)?,
                        store_timeout: duration("--store-timeout", &a.store_timeout)?,
                    },
                }))
            }
            cli::Command::Status(a) => CommandConfig::Status { message: a.message },
            cli::Command::Control { action } => CommandConfig::Control(match action {
                cli::ControlAction::Pause => crate::ledger::Steer::Pause,
                cli::ControlAction::Resume => crate::ledger::Steer::Resume,
                cli::ControlAction::Rate { rate } => {
                    // Checked here, so the run never meets a rate it cannot read.
                    let spec: crate::throttle::RateSpec = rate
                        .parse()
                        .map_err(|e| usage("control rate", format!("{e}")))?;
                    crate::ledger::Steer::Rate(spec.to_string())
                }
            }),
            cli::Command::Bounces(a) => CommandConfig::Bounces(bounces(a)?),
            cli::Command::Cluster(a) => CommandConfig::Cluster {
                url: cluster_url(a.cluster.as_deref().ok_or_else(|| {
                    usage(
                        "--cluster",
                        "is needed: the address given to `run --cluster`",
                    )
                })?)?,
                action: a.action,
            },
            cli::Command::Audit(a) => CommandConfig::Audit(AuditConfig {
                filter: AuditFilter {
                    state: a.state.as_deref().map(parse_state_option).transpose()?,
                    window: a.window,
                    recipient: a.recipient,
                    // `<>` is how people write the null sender; the ledger stores "".
                    sender: a.sender.map(|s| if s == "<>" { String::new() } else { s }),
                    queue_id: a.queue_id,
                },
            }),
        };
        Ok(Config {
            ledger,
            output,
            command,
        })
    }
}

/// The ledger of a command; only `report` combines several (it takes them all).
fn one_ledger(cli: &Cli) -> Result<PathBuf> {
    let name = match &cli.command {
        cli::Command::Report(_) => None,
        cli::Command::Ingest(_) => Some("ingest"),
        cli::Command::Run(_) => Some("run"),
        cli::Command::Status(_) => Some("status"),
        cli::Command::Control { .. } => Some("control"),
        cli::Command::Bounces(_) => Some("bounces"),
        cli::Command::Audit(_) => Some("audit"),
        cli::Command::Cluster(_) => None,
    };
    match (cli.ledger.as_slice(), name) {
        ([], _) => Err(usage("--ledger", "needs a path")),
        ([_, _, ..], Some(name)) => Err(usage(
            "--ledger",
            format!(
                "given {} times, but `{name}` works on one ledger; only `report` combines several",
                cli.ledger.len()
            ),
        )),
        ([first, ..], _) => Ok(first.clone()),
    }
}

fn bounces(a: cli::BouncesArgs) -> Result<BouncesConfig> {
    use cli::BouncesAction as A;
    Ok(match (a.show, a.action) {
        (Some(id), _) | (None, Some(A::Show { id })) => BouncesConfig::Show(id),
        (None, None | Some(A::List)) => BouncesConfig::List,
        (
            None,
            Some(A::Preview {
                message,
                incident: path,
                clock,
                return_limit,
            }),
        ) => BouncesConfig::Preview {
            queue_id: message,
            incident: incident::load(&path)?,
            now: parse_now(clock.now.as_deref())?,
            return_limit,
        },
        (
            None,
            Some(A::Send {
                relay,
                rate,
                per_domain_rate,
                insecure_tls,
                connect_timeout,
                reply_timeout,
                resend_uncertain,
                metrics,
            }),
        ) => BouncesConfig::Send {
            metrics,
            relay: relay.parse().map_err(|e| usage("--relay", e))?,
            rate: rate
                .as_deref()
                .map(|r| r.parse::<RateSpec>().map_err(|e| usage("--rate", e)))
                .transpose()?,
            per_domain_rate: per_domain_rate
                .as_deref()
                .map(|r| {
                    r.parse::<RateSpec>()
                        .map_err(|e| usage("--per-domain-rate", e))
                })
                .transpose()?,
            credentials: Credentials::from_env(&smtp::CREDENTIAL_VARS).map_err(|e| {
                anyhow::Error::new(Failure::new(Exit::Config, format!("SMTP credentials: {e}")))
            })?,
            insecure_tls,
            timeouts: reply_timeouts(&connect_timeout, &reply_timeout)?,
            resend_uncertain,
        },
        (None, Some(A::Write { outbox })) => BouncesConfig::Write { outbox },
    })
}

/// `--connect-timeout` and `--reply-timeout` (each reply as a whole; the reply after the
/// final dot gets twice as long).
fn reply_timeouts(connect: &str, reply: &str) -> Result<Timeouts> {
    let reply = duration("--reply-timeout", reply)?;
    Ok(Timeouts {
        connect: duration("--connect-timeout", connect)?,
        command: reply,
        data_end: reply.saturating_mul(2),
    })
}

fn parse_state_option(s: &str) -> Result<RcptState> {
    s.parse::<RcptState>().map_err(|_| {
        let names: Vec<&str> = crate::ledger::state::ALL_STATES
            .iter()
            .map(|s| s.as_str())
            .collect();
        usage(
            "--state",
            format!("`{s}` is not one of {}", names.join(", ")),
        )
    })
}

/// `--format`, with `--json` as an alias of `--format json`.
fn report_format(format: Option<&str>, json: bool) -> Result<Format> {
    let parsed = format
        .map(|f| f.parse::<Format>().map_err(|e| usage("--format", e)))
        .transpose()?;
    match (parsed, json) {
        (Some(f), true) if f != Format::Json => Err(usage(
            "--format",
            format!("`{}` conflicts with --json", format.unwrap_or_default()),
        )),
        (_, true) => Ok(Format::Json),
        (Some(f), false) => Ok(f),
        (None, false) => Ok(Format::Table),
    }
}

fn parse_now(now: Option<&str>) -> Result<DateTime<FixedOffset>> {
    match now {
        // To the second: a fraction decides nothing here, and printed it would be
        // nanoseconds in every report line that shows the clock.
        None => Ok(chrono::SubsecRound::trunc_subsecs(
            chrono::Local::now().fixed_offset(),
            0,
        )),
        Some(s) => DateTime::parse_from_rfc3339(s).map_err(|e| {
            usage(
                "--now",
                format!("`{s}` is not an RFC 3339 time with an offset ({e})"),
            )
        }),
    }
}

fn pace(p: &cli::Pace) -> Result<PaceConfig> {
    if p.batch_size == 0 {
        return Err(usage("--batch-size", "must be at least 1"));
    }
    Ok(PaceConfig {
        rate: p
            .rate
            .as_deref()
            .map(|r| r.parse::<RateSpec>().map_err(|e| usage("--rate", e)))
            .transpose()?,
        batch_size: p.batch_size,
        pause: duration("--pause", &p.pause)?,
        max_bytes_rate: p
            .max_bytes_rate
            .as_deref()
            .map(|r| parse_bytes_rate(r).map_err(|e| usage("--max-bytes-rate", e)))
            .transpose()?,
    })
}

fn duration(option: &str, s: &str) -> Result<Duration> {
    crate::throttle::parse_duration(s).map_err(|e| usage(option, e))
}

/// `20MB/s`, `500KB/s`, `1GB/s` or a plain number of bytes per second (decimal units).
pub fn parse_bytes_rate(s: &str) -> Result<f64, String> {
    let body = s.strip_suffix("/s").unwrap_or(s).trim();
    let digits = body
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(body.len());
    let (number, unit) = body.split_at(digits);
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" | "K" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use B, KB, MB or GB per second)"
            ));
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a byte rate like 20MB/s"))?;
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("`{s}` must be more than zero"));
    }
    Ok(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates() {
        assert_eq!(parse_bytes_rate("20MB/s"), Ok(20e6));
        assert_eq!(parse_bytes_rate("500KB/s"), Ok(500e3));
        assert_eq!(parse_bytes_rate("1000"), Ok(1000.0));
        assert!(parse_bytes_rate("0MB/s").is_err());
        assert!(parse_bytes_rate("fast").is_err());
        assert!(parse_bytes_rate("5PB/s").is_err());
    }
}
