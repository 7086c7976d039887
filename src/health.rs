//! Whether the daemon does its job: the one verdict behind `GET /healthz`,
//! the systemd watchdog and the `edgeloop_healthy` gauge.
//!
//! A [`HealthMonitor`] evaluates every [`HealthMonitor::PERIOD`] (and on each
//! read) from the counters in [`Stats`] and the MQTT [`Connection`]:
//!
//! | reason | when |
//! |---|---|
//! | `ingest_stalled` | messages wait (received, not yet handled by the writer) and nothing was committed for `daemon.stall_timeout_s` seconds, while the store accepts writes (a commit still reading a pipeline's dedup index, which reports its progress, is not stalled) |
//! | `mqtt_disconnected` | the ingest connection has been down for longer than `mqtt.keep_alive_s` |
//! | `store_refusing_writes` | the writer holds a batch the store refused (free space below `store.min_free_bytes`, or a failed commit) |
//!
//! Each change of the set of reasons is logged once, at WARN when one
//! appears and at INFO when all are gone.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use crate::ingest::mqtt::Connection;
use crate::stats::Stats;

/// The verdict at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// `"ok"` or `"unhealthy"`.
    pub status: &'static str,
    /// Why it is unhealthy (empty when healthy): `ingest_stalled`,
    /// `mqtt_disconnected`, `store_refusing_writes`.
    pub reasons: Vec<&'static str>,
    /// One sentence per reason, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub mqtt_connected: bool,
    pub mqtt_subscribed: bool,
    /// Messages received and not yet handled by the writer.
    pub ingest_waiting: u64,
    /// Seconds since the last commit; `None` before the first.
    pub seconds_since_commit: Option<f64>,
    pub store_refusing_writes: bool,
}

impl Health {
    /// Whether no reason is present.
    pub fn is_ok(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// Evaluates and remembers the daemon's health.
#[derive(Debug)]
pub struct HealthMonitor {
    stats: Arc<Stats>,
    connection: Arc<Connection>,
    stall_timeout: Duration,
    keep_alive: Duration,
    /// Last time (ms since the Unix epoch) nothing was waiting; a stall is
    /// counted from the later of this and the last commit.
    idle_ms: AtomicI64,
    /// `messages_handled` at the previous evaluation: progress too.
    handled: AtomicU64,
    last: Mutex<Vec<&'static str>>,
}

impl HealthMonitor {
    /// How often the daemon evaluates (and logs changes) on its own.
    pub const PERIOD: Duration = Duration::from_millis(500);

    pub fn new(
        stats: Arc<Stats>,
        connection: Arc<Connection>,
        stall_timeout: Duration,
        keep_alive: Duration,
    ) -> Self {
        Self {
            stats,
            connection,
            stall_timeout,
            keep_alive,
            idle_ms: AtomicI64::new(crate::stats::now_ms()),
            handled: AtomicU64::new(0),
            last: Mutex::new(Vec::new()),
        }
    }

    /// The verdict now; logs a change of reasons once.
    pub fn check(&self) -> Health {
        let h = self.evaluate(crate::stats::now_ms());
        if let Ok(mut last) = self.last.lock() {
            if *last != h.reasons {
                match &h.error {
                    Some(error) => warn!(reasons = ?h.reasons, %error, "Unhealthy."),
                    None => info!(was = ?*last, "Healthy again."),
                }
                *last = h.reasons.clone();
            }
        }
        h
    }

    /// The verdict at `now_ms` (ms since the Unix epoch), without logging.
    pub fn evaluate(&self, now_ms: i64) -> Health {
        let st = &self.stats;
        let received = st.messages_received.load(Relaxed);
        let handled = st.messages_handled.load(Relaxed);
        let waiting = received.saturating_sub(handled);
        if waiting == 0 || self.handled.swap(handled, Relaxed) != handled {
            self.idle_ms.store(now_ms, Relaxed);
        }
        let last_commit = st.last_commit_ms.load(Relaxed);
        let refusing = st.store_refusing.load(Relaxed);
        let mut reasons = Vec::new();
        let mut errors = Vec::new();
        let progress = last_commit
            .max(self.idle_ms.load(Relaxed))
            .max(st.store_progress_ms.load(Relaxed));
        let stalled_ms = now_ms - progress;
        if waiting > 0 && !refusing && stalled_ms > self.stall_timeout.as_millis() as i64 {
            reasons.push("ingest_stalled");
            errors.push(format!(
                "ingest stalled: {waiting} message(s) waiting and no commit for {:.1} s (daemon.stall_timeout_s = {})",
                stalled_ms as f64 / 1000.0,
                self.stall_timeout.as_secs()
            ));
        }
        let down_since = st.mqtt_disconnected_since_ms.load(Relaxed);
        if !self.connection.is_connected()
            && down_since > 0
            && now_ms - down_since > self.keep_alive.as_millis() as i64
        {
            reasons.push("mqtt_disconnected");
            errors.push(format!(
                "MQTT connection down for {:.1} s (longer than mqtt.keep_alive_s = {})",
                (now_ms - down_since) as f64 / 1000.0,
                self.keep_alive.as_secs()
            ));
        }
        if refusing {
            reasons.push("store_refusing_writes");
            let why = st
                .store_refusal
                .lock()
                .map(|r| r.clone())
                .unwrap_or_default();
            errors.push(format!("the store refuses writes: {why}"));
        }
        Health {
            status: if reasons.is_empty() {
                "ok"
            } else {
                "unhealthy"
            },
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            reasons,
            mqtt_connected: self.connection.is_connected(),
            mqtt_subscribed: self.connection.is_subscribed(),
            ingest_waiting: waiting,
            seconds_since_commit: (last_commit > 0)
                .then(|| (now_ms - last_commit).max(0) as f64 / 1000.0),
            store_refusing_writes: refusing,
        }
    }

    /// Evaluates every [`Self::PERIOD`] until `shutdown`, so state changes
    /// are logged even when nobody asks.
    pub async fn run(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Self::PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => { self.check(); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor() -> (Arc<Stats>, HealthMonitor) {
        let stats = Arc::new(Stats::default());
        let m = HealthMonitor::new(
            stats.clone(),
            Arc::new(Connection::default()),
            Duration::from_secs(10),
            Duration::from_secs(30),
        );
        (stats, m)
    }

    #[test]
    fn waiting_without_a_commit_past_the_timeout_is_a_stall() {
        let (stats, m) = monitor();
        let t0 = 1_000_000;
        m.idle_ms.store(t0, Relaxed);
        stats.messages_received.store(5, Relaxed);
        stats.last_commit_ms.store(t0, Relaxed);
        assert!(!m.evaluate(t0 + 9_000).reasons.contains(&"ingest_stalled"));
        let h = m.evaluate(t0 + 10_001);
        assert_eq!(h.reasons, ["ingest_stalled"]);
        assert_eq!(h.ingest_waiting, 5);
        assert_eq!(h.seconds_since_commit, Some(10.001));
        // The writer handles them: healthy at once.
        stats.messages_handled.store(5, Relaxed);
        assert!(m.evaluate(t0 + 20_000).is_ok());
    }

    /// A commit reading a pipeline's dedup index (seconds on a slow disk
    /// at the default retention) reports progress: not a stall while it
    /// moves on, a stall once it stops for the timeout.
    #[test]
    fn a_commit_reading_the_dedup_index_is_not_a_stall_while_it_progresses() {
        let (stats, m) = monitor();
        let t0 = 1_000_000;
        m.idle_ms.store(t0, Relaxed);
        stats.messages_received.store(5, Relaxed);
        stats.last_commit_ms.store(t0, Relaxed);
        stats.store_progress_ms.store(t0 + 25_000, Relaxed);
        assert!(m.evaluate(t0 + 30_000).is_ok());
        let h = m.evaluate(t0 + 35_001);
        assert_eq!(h.reasons, ["ingest_stalled"]);
    }

    #[test]
    fn idle_time_does_not_count_towards_a_stall() {
        let (stats, m) = monitor();
        // Last commit long ago, nothing waiting since: not stalled when a
        // message arrives now.
        stats.last_commit_ms.store(1_000, Relaxed);
        assert!(m.evaluate(500_000).is_ok());
        stats.messages_received.store(1, Relaxed);
        assert!(m.evaluate(501_000).is_ok());
        assert_eq!(m.evaluate(510_001).reasons, ["ingest_stalled"]);
    }

    #[test]
    fn a_refusing_store_is_its_own_reason_not_a_stall() {
        let (stats, m) = monitor();
        stats.messages_received.store(3, Relaxed);
        stats.store_refusing.store(true, Relaxed);
        *stats.store_refusal.lock().unwrap() = "disk full".into();
        let h = m.evaluate(crate::stats::now_ms() + 60_000);
        assert_eq!(h.reasons, ["store_refusing_writes"]);
        assert!(h.error.unwrap().contains("disk full"));
    }

    #[test]
    fn disconnected_counts_only_past_the_keep_alive() {
        let (stats, m) = monitor();
        stats.mqtt_disconnected_since_ms.store(100_000, Relaxed);
        assert!(m.evaluate(129_000).is_ok());
        assert_eq!(m.evaluate(130_001).reasons, ["mqtt_disconnected"]);
    }
}
