"""``GET /metrics``: Prometheus text for the whole instance, built with prometheus-client.

Workers keep plain counters (``node.Node``) and push a snapshot to the listener about once a
second; the listener adds its own figures, sums the workers' (keeping those of workers that
exited, so counters never go backwards) and pushes the result to every worker about once a
second. Any worker answering ``/metrics`` renders the latest of those here, without asking
the listener anything: a scrape (or a flood of them) costs the listener nothing, and there
is no multiprocess directory, nothing per process to reconcile.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)


class _InstanceCollector:
    def __init__(self, stats: dict[str, Any] | None, local: dict[str, Any]) -> None:
        self.stats = stats
        self.local = local

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        up = GaugeMetricFamily("relay_listener_up", "1 when the listener answered")
        up.add_metric([], 1 if stats else 0)
        yield up
        if not stats:
            conns = GaugeMetricFamily("relay_worker_connections",
                                      "WebSockets open on the worker that answered")
            conns.add_metric([], self.local["connections"])
            yield conns
            return
        db = GaugeMetricFamily("relay_database_up", "1 when the LISTEN connection is live")
        db.add_metric([], 1 if stats.get("database") == "connected" else 0)
        yield db
        for name, key, text in (
            ("relay_connections", "totalConnections", "authenticated WebSocket connections"),
            ("relay_users", "connectedUsers", "distinct connected users"),
            ("relay_channels", "channels", "channels open: wanted by a client, or lingering"),
            ("relay_channels_listened", "listened",
             "channels LISTENed on the database connection (the shared channel included)"),
            ("relay_notify_queue_usage", "notifyQueueUsage",
             "pg_notification_queue_usage(): fraction of PostgreSQL's NOTIFY queue in use"),
            ("relay_channels_lingering", "lingering", "channels kept after their last client"),
            ("relay_workers", "workers", "workers connected to the listener"),
            ("relay_history_bytes", "historyBytes", "bytes held for resume"),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], stats.get(key, 0))
            yield gauge
        per_user = GaugeMetricFamily("relay_user_channels_listen",
                                     "1 while each user's channels are LISTENed "
                                     "(RELAY_USER_CHANNELS), 0 on the shared channel alone")
        per_user.add_metric([], 1 if stats.get("userChannels") == "listen" else 0)
        yield per_user
        counters = stats.get("counters") or {}
        for name, value, text in (
            ("relay_notifications", stats.get("notifications", 0),
             "notifications routed to an open channel (numbered, sent to the workers)"),
            ("relay_websocket_upgrades", counters.get("upgraded", 0),
             "WebSocket handshakes answered 101 (authenticated or not)"),
            ("relay_websocket_connected", counters.get("connected", 0),
             "WebSockets that authenticated and were sent `connected`"),
            ("relay_deliveries", counters.get("delivered", 0),
             "update messages queued to clients"),
            ("relay_database_reconnects", stats.get("databaseReconnects", 0),
             "times the listener lost its database connection"),
            ("relay_resyncs", counters.get("resync", 0), "resync messages sent to clients"),
            ("relay_slow_consumer_drops", counters.get("slow_consumer", 0),
             "clients closed with 4009 (outbound queue overflow)"),
            ("relay_heartbeat_timeouts", counters.get("heartbeat_timeout", 0),
             "clients closed with 4011 (no pong)"),
            ("relay_resumes_throttled", counters.get("resume_throttled", 0),
             "resuming clients closed with 1013 (RELAY_RESUME_RATE)"),
            ("relay_pending_refused", counters.get("pending_refused", 0),
             "connections answered 429: their address held RELAY_MAX_PENDING_PER_ADDRESS "
             "unauthenticated ones"),
            ("relay_pending_evicted", counters.get("pending_evicted", 0),
             "unauthenticated connections closed to make room for a newer one "
             "(RELAY_MAX_PENDING_CONNECTIONS)"),
        ):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], value)
            yield counter
        dropped = CounterMetricFamily(
            "relay_notifications_dropped", "notifications not delivered, by reason: "
            "unsubscribed (no client here wants the channel), foreign (not relay's format on "
            "relay's channel), unknown kind (from a newer relay SQL), unlistened (a "
            "per-user channel's, after per-user LISTEN was turned off)", labels=["reason"])
        for reason, value in sorted((stats.get("notificationsDropped") or {}).items()):
            dropped.add_metric([reason], value)
        yield dropped
        closes = CounterMetricFamily("relay_closes", "connections closed by relay, by code",
                                     labels=["code"])
        for code, value in sorted((stats.get("closes") or {}).items()):
            closes.add_metric([str(code)], value)
        yield closes
        failures = CounterMetricFamily("relay_auth_failures", "refused tokens, by reason",
                                       labels=["reason"])
        for reason, value in sorted((stats.get("authFailures") or {}).items()):
            failures.add_metric([reason], value)
        yield failures
        latency = stats.get("latency") or {}
        buckets = [(_bound(bound), count) for bound, count in latency.get("buckets", [])]
        if buckets:
            histogram = HistogramMetricFamily(
                "relay_commit_to_listener_seconds",
                "commit time (payload ts) to the listener's dispatch of the notification")
            histogram.add_metric([], buckets, latency.get("sum", 0.0))
            yield histogram


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def render(stats: dict[str, Any] | None, local: dict[str, Any]) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_InstanceCollector(stats, local))  # type: ignore[arg-type]
    return generate_latest(registry)
