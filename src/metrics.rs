//! Prometheus metrics, in an explicit registry (no globals), served as text at `/metrics`.
//!
//! Counters and histograms are updated where things happen (server, dispatcher, client); the
//! gauges that describe the store (inbox depth, parked events, ghosts, portals, pool use) are
//! read from it when scraped.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::store::Store;

/// Labels: a list of name → value pairs.
type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

/// The bridge's metrics. Cheap to share (`Arc`); every update is lock-free or a short lock.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Transactions received from the homeserver, by outcome (`stored`, `duplicate`, `error`).
    pub transactions: Family<Labels, Counter>,
    /// Events per received transaction.
    pub transaction_events: Histogram,
    /// Events handed to the bridge, by type and outcome (`ok`, `failed`, `parked`).
    pub events: Family<Labels, Counter>,
    /// Time the bridge took per event, by type.
    pub handler_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Outgoing Client-Server requests, by route template and status.
    pub requests: Family<Labels, Counter>,
    /// Outgoing request duration, by route template.
    pub request_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Retries of outgoing requests, by cause (`rate_limited`, `unavailable`).
    pub retries: Family<Labels, Counter>,
    /// Changes of users' logins' connection states, by new state (`CONNECTED`, ...).
    pub login_states: Family<Labels, Counter>,
    /// Encrypted events the bridge device read, by outcome: `decrypted`, `awaiting_key` (set
    /// aside until its room key arrives), `failed` (parked: the key can never open it).
    pub decryptions: Family<Labels, Counter>,
    inbox_pending: Gauge,
    /// Times the in-memory hand-off queue overflowed, so the dispatcher read stored batches
    /// back from the database: the bridge is handling events slower than they arrive.
    pub inbox_handoff_overflows: Counter,
    inbox_oldest_age_seconds: Gauge,
    inbox_parked: Gauge,
    ghosts: Gauge,
    portals: Gauge,
    pool_connections: Gauge,
    pool_idle: Gauge,
    /// The `events` counters and `handler_seconds` histogram of each event type label (indexed
    /// like [`EVENT_TYPE_LABELS`]), taken from the families once: the hot path then counts
    /// without building labels, hashing or allocating.
    event_handles: [OnceLock<EventHandles>; EVENT_TYPE_LABELS.len()],
}

/// The metrics of one event type label.
#[derive(Debug)]
struct EventHandles {
    /// Indexed by [`EventOutcome`].
    outcomes: [Counter; EventOutcome::ALL.len()],
    seconds: Histogram,
}

/// How handling an event ended (the `outcome` label of `events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventOutcome {
    /// The handler succeeded.
    Ok,
    /// It failed and the event will be retried.
    Failed,
    /// It failed for good and the event was parked.
    Parked,
}

impl EventOutcome {
    /// Every outcome, in discriminant order.
    const ALL: [Self; 3] = [Self::Ok, Self::Failed, Self::Parked];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Parked => "parked",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the metrics and registers them under the `mxbridge_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mxbridge");
        let m = Self {
            transactions: Family::default(),
            transaction_events: size_histogram(),
            events: Family::default(),
            handler_seconds: Family::new_with_constructor(latency_histogram),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            login_states: Family::default(),
            decryptions: Family::default(),
            inbox_pending: Gauge::default(),
            inbox_handoff_overflows: Counter::default(),
            inbox_oldest_age_seconds: Gauge::default(),
            inbox_parked: Gauge::default(),
            ghosts: Gauge::default(),
            portals: Gauge::default(),
            pool_connections: Gauge::default(),
            pool_idle: Gauge::default(),
            event_handles: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "transactions",
            "Transactions received from the homeserver",
            m.transactions.clone(),
        );
        registry.register(
            "transaction_events",
            "Events per received transaction",
            m.transaction_events.clone(),
        );
        registry.register(
            "events",
            "Events handed to the bridge, by type and outcome",
            m.events.clone(),
        );
        registry.register(
            "handler_seconds",
            "Time the bridge took per event",
            m.handler_seconds.clone(),
        );
        registry.register(
            "requests",
            "Requests to the homeserver, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Duration of requests to the homeserver",
            m.request_seconds.clone(),
        );
        registry.register(
            "retries",
            "Retried requests to the homeserver, by cause",
            m.retries.clone(),
        );
        registry.register(
            "login_state_changes",
            "Changes of logins' connection states, by new state",
            m.login_states.clone(),
        );
        registry.register(
            "decryptions",
            "Encrypted events read by the bridge device, by outcome",
            m.decryptions.clone(),
        );
        registry.register(
            "inbox_pending",
            "Events stored and not yet handled",
            m.inbox_pending.clone(),
        );
        registry.register(
            "inbox_handoff_overflows",
            "Times the dispatcher fell behind by more than the in-memory hand-off queue and read \
             stored events back from the database",
            m.inbox_handoff_overflows.clone(),
        );
        registry.register(
            "inbox_oldest_age_seconds",
            "Age of the oldest pending event",
            m.inbox_oldest_age_seconds.clone(),
        );
        registry.register("inbox_parked", "Events that failed for good", m.inbox_parked.clone());
        registry.register("ghosts", "Ghosts known to the bridge", m.ghosts.clone());
        registry.register("portals", "Portals known to the bridge", m.portals.clone());
        registry.register(
            "db_connections",
            "Open database connections",
            m.pool_connections.clone(),
        );
        registry.register("db_connections_idle", "Idle database connections", m.pool_idle.clone());
        Self { registry, ..m }
    }

    /// Counts a transaction and its size.
    pub(crate) fn transaction(&self, outcome: &'static str, events: usize) {
        self.transactions.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
        #[allow(clippy::cast_precision_loss)]
        self.transaction_events.observe(events as f64);
    }

    /// Counts a handled event and its handling time.
    pub(crate) fn event(&self, kind: &str, outcome: EventOutcome, took: Duration) {
        let label = event_type_index(kind);
        let handles = self.event_handles[label].get_or_init(|| {
            let kind = EVENT_TYPE_LABELS[label];
            let counter = |outcome: EventOutcome| {
                let labels =
                    vec![("type", kind.to_owned()), ("outcome", outcome.label().to_owned())];
                self.events.get_or_create(&labels).clone()
            };
            EventHandles {
                outcomes: EventOutcome::ALL.map(counter),
                seconds: self
                    .handler_seconds
                    .get_or_create(&vec![("type", kind.to_owned())])
                    .clone(),
            }
        });
        handles.outcomes[outcome as usize].inc();
        handles.seconds.observe(took.as_secs_f64());
    }

    /// Counts an outgoing request.
    pub(crate) fn request(&self, route: &str, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.requests.get_or_create(&vec![("route", route.to_owned()), ("status", status)]).inc();
        self.request_seconds
            .get_or_create(&vec![("route", route.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Counts a retry of an outgoing request.
    pub(crate) fn retry(&self, cause: &'static str) {
        self.retries.get_or_create(&vec![("cause", cause.to_owned())]).inc();
    }

    /// Reads the store's gauges and renders every metric in the Prometheus text format.
    pub async fn render(&self, store: &Store) -> String {
        if let Ok(stats) = store.inbox_stats().await {
            self.inbox_pending.set(stats.pending);
            self.inbox_parked.set(stats.parked);
            let age =
                stats.oldest_pending_ms.map_or(0, |t| (crate::util::now_ms() - t).max(0) / 1000);
            self.inbox_oldest_age_seconds.set(age);
        }
        if let Ok((ghosts, portals)) = store.mapping_counts().await {
            self.ghosts.set(ghosts);
            self.portals.set(portals);
        }
        let (size, idle) = store.pool_usage();
        self.pool_connections.set(i64::from(size));
        self.pool_idle.set(i64::try_from(idle).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Event types as metric labels: the spec's types by name, everything else as `other`, so a
/// sender cannot grow the label set.
/// The `type` label values: the event types worth a series of their own, then `other`.
const EVENT_TYPE_LABELS: [&str; 15] = [
    "m.room.message",
    "m.room.member",
    "m.reaction",
    "m.room.redaction",
    "m.room.power_levels",
    "m.room.create",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.encryption",
    "m.room.encrypted",
    "m.sticker",
    "m.room.tombstone",
    "other",
];

/// The index of an event type's label in [`EVENT_TYPE_LABELS`] (`other` for any type not
/// listed, so a homeserver cannot grow the series without bound).
fn event_type_index(kind: &str) -> usize {
    let last = EVENT_TYPE_LABELS.len() - 1;
    EVENT_TYPE_LABELS[..last].iter().position(|&k| k == kind).unwrap_or(last)
}

/// Shared metrics handle.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn render_shows_counters_and_store_gauges() {
        let store = Store::connect_url("sqlite::memory:").await.unwrap();
        store
            .accept_transaction(
                "1",
                "h",
                &[crate::store::NewEvent {
                    event_id: "$a".into(),
                    room_id: "!r".into(),
                    json: "{}",
                }],
            )
            .await
            .unwrap();
        let m = Metrics::new();
        m.transaction("stored", 1);
        m.event("m.room.message", EventOutcome::Ok, Duration::from_millis(3));
        m.event("m.room.message", EventOutcome::Ok, Duration::from_millis(3));
        m.event("m.room.message", EventOutcome::Failed, Duration::from_millis(3));
        m.event("com.example.spam", EventOutcome::Ok, Duration::from_millis(3));
        m.request("/_matrix/client/v3/rooms/{room_id}/join", Some(200), Duration::from_millis(5));
        m.retry("rate_limited");
        let text = m.render(&store).await;
        assert!(text.contains("mxbridge_transactions_total{outcome=\"stored\"} 1"), "{text}");
        assert!(text.contains("mxbridge_inbox_pending 1"), "{text}");
        assert!(text.contains("mxbridge_events_total{type=\"other\",outcome=\"ok\"} 1"), "{text}");
        // The cached handles count into the families' series.
        let series = |outcome: &str| {
            format!("mxbridge_events_total{{type=\"m.room.message\",outcome=\"{outcome}\"}}")
        };
        assert!(text.contains(&format!("{} 2", series("ok"))), "{text}");
        assert!(text.contains(&format!("{} 1", series("failed"))), "{text}");
        assert!(text.contains(&format!("{} 0", series("parked"))), "{text}");
        assert!(
            text.contains("mxbridge_handler_seconds_count{type=\"m.room.message\"} 3"),
            "{text}"
        );
        assert!(text.contains("mxbridge_retries_total{cause=\"rate_limited\"} 1"), "{text}");
        assert!(
            text.contains("route=\"/_matrix/client/v3/rooms/{room_id}/join\",status=\"200\""),
            "{text}"
        );
        assert!(text.contains("mxbridge_handler_seconds_bucket"), "{text}");
    }
}
