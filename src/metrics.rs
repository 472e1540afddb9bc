//! Prometheus metrics of a run (`--metrics ADDR:PORT`): the values the replay loop feeds
//! in through [`Metrics`], and the HTTP endpoint that serves them at `/metrics` in the
//! OpenMetrics text format. No addresses or queue ids become label values: labels are
//! ledger states, outcomes, reply classes and DSN kinds, a handful each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, anyhow};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::exit::{Exit, Failure};
use crate::ledger::{DsnKind, RcptState};

/// How long a finished command with `--metrics` waits for a last scrape of its final
/// values.
pub const LINGER: Duration = Duration::from_secs(5);

/// The content type of the OpenMetrics text format, which Prometheus asks for first.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// A recipient's outcome as `spoolreplay_deliveries_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    Deferred,
    Failed,
    Uncertain,
}

impl DeliveryOutcome {
    const ALL: [DeliveryOutcome; 4] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Deferred,
        DeliveryOutcome::Failed,
        DeliveryOutcome::Uncertain,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Deferred => "deferred",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Uncertain => "uncertain",
        }
    }
}

/// Every metric of a run. Shared (behind an `Arc`) by the replay loop that updates it and
/// the endpoint thread that reads it; all values are atomics, so neither waits.
pub struct Metrics {
    registry: Registry,
    recipients: Family<StateLabel, Gauge>,
    deliveries: Family<OutcomeLabel, Counter>,
    replies: Family<ClassLabel, Counter>,
    pace: Gauge<f64, AtomicU64>,
    /// A family without labels: its one series is absent while the pace has no ceiling
    /// (the encoder writes an infinite gauge as `inf`, which OpenMetrics does not allow).
    pace_limit: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
    paused: Gauge,
    delivery_seconds: Histogram,
    delay_seconds: Histogram,
    dsns: Family<KindLabel, Counter>,
    eta: Gauge<f64, AtomicU64>,
}

/// Replies by class, every class's series there from the first scrape (so `rate()` and
/// absent-alerts work), for the store's replies and the relay's alike.
fn reply_classes() -> Family<ClassLabel, Counter> {
    let replies = Family::<ClassLabel, Counter>::default();
    for class in ["2xx", "4xx", "5xx"] {
        let _ = replies.get_or_create(&ClassLabel { class });
    }
    replies
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("spoolreplay");
        let recipients = Family::<StateLabel, Gauge>::default();
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        let replies = reply_classes();
        let dsns = Family::<KindLabel, Counter>::default();
        let pace = Gauge::<f64, AtomicU64>::default();
        let pace_limit = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
        let paused = Gauge::default();
        let eta = Gauge::<f64, AtomicU64>::default();
        // A store transaction takes milliseconds to a minute (a slow store, a timeout).
        let delivery_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        // Arrival to delivery: the outage itself, minutes to weeks.
        let delay_seconds = Histogram::new(exponential_buckets(60.0, 2.0, 16));
        // Every series exists from the first scrape, so `rate()` and absent-alerts work.
        for s in crate::ledger::state::ALL_STATES {
            let _ = recipients.get_or_create(&StateLabel { state: s.as_str() });
        }
        for o in DeliveryOutcome::ALL {
            let _ = deliveries.get_or_create(&OutcomeLabel {
                outcome: o.as_str(),
            });
        }
        for kind in [DsnKind::Failure, DsnKind::Delay, DsnKind::Postmaster] {
            let _ = dsns.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        eta.set(f64::NAN);
        registry.register(
            "recipients",
            "Recipients in the ledger per state",
            recipients.clone(),
        );
        registry.register(
            "deliveries",
            "Recipient outcomes of store transactions in this run",
            deliveries.clone(),
        );
        registry.register(
            "store_replies",
            "Per-recipient store replies in this run by class",
            replies.clone(),
        );
        registry.register(
            "pace_messages_per_second",
            "Messages handed to the store per second over the last few seconds",
            pace.clone(),
        );
        registry.register(
            "pace_limit_messages_per_second",
            "The adaptive pace's current ceiling (absent: no ceiling)",
            pace_limit.clone(),
        );
        registry.register(
            "paused",
            "1 while the run is paused by `spoolreplay control pause`",
            paused.clone(),
        );
        registry.register_with_unit(
            "delivery",
            "Time of one store transaction (one message, all its recipients)",
            Unit::Seconds,
            delivery_seconds.clone(),
        );
        registry.register_with_unit(
            "delivery_delay",
            "Time from a message's arrival at the MX to its delivery into the store",
            Unit::Seconds,
            delay_seconds.clone(),
        );
        registry.register("dsns", "DSNs made in this run by kind", dsns.clone());
        registry.register_with_unit(
            "eta",
            "Estimated time until the open recipients are delivered (NaN: not known yet)",
            Unit::Seconds,
            eta.clone(),
        );
        Metrics {
            registry,
            recipients,
            deliveries,
            replies,
            pace,
            pace_limit,
            paused,
            delivery_seconds,
            delay_seconds,
            dsns,
            eta,
        }
    }

    /// The ledger's recipients per state (states not listed are 0).
    pub fn set_recipients(&self, counts: &[(RcptState, u64)]) {
        for s in crate::ledger::state::ALL_STATES {
            let n = counts.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
            self.recipients
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// One recipient's outcome, with the store's reply code when there was one.
    pub fn outcome(&self, outcome: DeliveryOutcome, reply_code: Option<u16>) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        let class = match reply_code {
            Some(200..=299) => "2xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            _ => return,
        };
        self.replies.get_or_create(&ClassLabel { class }).inc();
    }

    /// A store transaction's duration.
    pub fn transaction(&self, took: Duration) {
        self.delivery_seconds.observe(took.as_secs_f64());
    }

    /// A delivered message's time from arrival to delivery.
    pub fn delivered_after(&self, delay: Duration) {
        self.delay_seconds.observe(delay.as_secs_f64());
    }

    /// The measured pace and the adaptive ceiling (`None`: unlimited).
    pub fn pace(&self, messages_per_second: f64, limit: Option<f64>) {
        self.pace.set(messages_per_second);
        match limit {
            Some(rate) => {
                self.pace_limit.get_or_create(&Vec::new()).set(rate);
            }
            None => {
                self.pace_limit.remove(&Vec::new());
            }
        }
    }

    pub fn paused(&self, paused: bool) {
        self.paused.set(i64::from(paused));
    }

    pub fn dsn(&self, kind: DsnKind) {
        self.dsns
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// The estimate (`None`: not known, e.g. nothing delivered yet).
    pub fn eta(&self, eta: Option<Duration>) {
        self.eta.set(eta.map_or(f64::NAN, |d| d.as_secs_f64()));
    }

    /// The exposition text (OpenMetrics, ending in `# EOF`).
    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

/// What an [`Endpoint`] serves: the metrics of `run` or of `bounces send`.
pub trait Exposition: Send + Sync {
    fn render(&self) -> String;
}

impl Exposition for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a metric.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        out = format!("# cannot encode the metrics: {e}\n# EOF\n");
    }
    out
}

/// The metrics of `bounces send --metrics`: DSNs by how their sending ended, and the
/// relay's replies by class.
pub struct SendMetrics {
    registry: Registry,
    sends: Family<OutcomeLabel, Counter>,
    replies: Family<ClassLabel, Counter>,
}

impl Default for SendMetrics {
    fn default() -> Self {
        SendMetrics::new()
    }
}

impl SendMetrics {
    pub fn new() -> SendMetrics {
        let mut registry = Registry::with_prefix("spoolreplay");
        let sends = Family::<OutcomeLabel, Counter>::default();
        let replies = reply_classes();
        for outcome in ["sent", "deferred", "failed", "uncertain"] {
            let _ = sends.get_or_create(&OutcomeLabel { outcome });
        }
        registry.register(
            "dsn_sends",
            "DSNs handed to the relay by `bounces send`, by how it ended",
            sends.clone(),
        );
        registry.register(
            "relay_replies",
            "The relay's replies to DSNs by class",
            replies.clone(),
        );
        SendMetrics {
            registry,
            sends,
            replies,
        }
    }

    /// One DSN's sending: `sent`, `deferred` (sent again next time), `failed` or
    /// `uncertain`, with the relay's reply code when it answered.
    pub fn sent(&self, outcome: &'static str, reply: &str) {
        self.sends.get_or_create(&OutcomeLabel { outcome }).inc();
        // The reply's three-digit code, when the relay answered at all.
        let code = reply
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok());
        let class = match code {
            Some(200..=299) => "2xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            _ => return,
        };
        self.replies.get_or_create(&ClassLabel { class }).inc();
    }
}

impl Exposition for SendMetrics {
    fn render(&self) -> String {
        encode(&self.registry)
    }
}

/// The HTTP endpoint: a thread serving `/metrics` until dropped.
pub struct Endpoint {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
    /// Scrapes rendered so far.
    rendered: Arc<AtomicU64>,
}

impl Endpoint {
    /// Listens on `addr` (port 0: any free port, see [`Endpoint::addr`]).
    pub fn start(addr: SocketAddr, metrics: Arc<dyn Exposition>) -> Result<Endpoint> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            anyhow!("{e}").context(
                Failure::new(
                    Exit::CantCreate,
                    format!("cannot listen on {addr} for --metrics"),
                )
                .with_hint("pick a free port, or another address, for --metrics"),
            )
        })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow!("the --metrics endpoint is not on an IP address"))?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let rendered = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&rendered);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, metrics.as_ref(), &counter))?;
        Ok(Endpoint {
            server,
            thread: Some(thread),
            addr,
            rendered,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Keeps serving until one scrape has read the final values (rendered after this
    /// call), or `linger` has passed: a run that ends between two scrapes would
    /// otherwise never show its last deliveries on a dashboard.
    pub fn finish(self, linger: Duration) {
        let seen = self.rendered.load(Ordering::SeqCst);
        let until = std::time::Instant::now() + linger;
        while self.rendered.load(Ordering::SeqCst) == seen && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, metrics: &dyn Exposition, rendered: &AtomicU64) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let response = if path == "/metrics" {
            let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE)
                .expect("a constant header is valid");
            let text = metrics.render();
            rendered.fetch_add(1, Ordering::SeqCst);
            tiny_http::Response::from_string(text).with_header(header)
        } else {
            tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
        };
        // A scraper that hung up is not the run's problem.
        let _ = request.respond(response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_start_with_prometheus_names() {
        let text = Metrics::new().render();
        for line in [
            "spoolreplay_recipients{state=\"pending\"} 0",
            "spoolreplay_deliveries_total{outcome=\"delivered\"} 0",
            "spoolreplay_deliveries_total{outcome=\"uncertain\"} 0",
            "spoolreplay_store_replies_total{class=\"4xx\"} 0",
            "spoolreplay_delivery_seconds_count 0",
            "spoolreplay_delivery_delay_seconds_count 0",
            "spoolreplay_dsns_total{kind=\"failure\"} 0",
            "spoolreplay_eta_seconds NaN",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        // No ceiling: no series (an infinite gauge is not valid OpenMetrics).
        assert!(!text.contains("spoolreplay_pace_limit_messages_per_second "));
    }

    #[test]
    fn outcomes_count_by_outcome_and_reply_class() {
        let m = Metrics::new();
        m.outcome(DeliveryOutcome::Delivered, Some(250));
        m.outcome(DeliveryOutcome::Deferred, Some(451));
        m.outcome(DeliveryOutcome::Deferred, None);
        m.transaction(Duration::from_millis(3));
        m.pace(4.0, Some(5.0));
        let text = m.render();
        for line in [
            "spoolreplay_deliveries_total{outcome=\"delivered\"} 1",
            "spoolreplay_deliveries_total{outcome=\"deferred\"} 2",
            "spoolreplay_store_replies_total{class=\"2xx\"} 1",
            "spoolreplay_store_replies_total{class=\"4xx\"} 1",
            "spoolreplay_delivery_seconds_count 1",
            "spoolreplay_pace_messages_per_second 4.0",
            "spoolreplay_pace_limit_messages_per_second 5.0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
