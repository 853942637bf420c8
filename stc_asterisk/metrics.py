"""stc-server's Prometheus metrics: read from the server's own state at scrape time.

Almost everything is a view of counters and tables the server keeps anyway (the
tunnel server's refusals, the media relay's RelayStats, the admission handler's
counters, ARI/AMI state), collected when Prometheus scrapes: the hot paths are not
touched. Only what has no state of its own to read (roster push latency, the
UNAUTHENTICATED channels seen and ejected) is recorded as it happens, through
the small `ServerMetrics` methods.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .app import ServerApp

# Why a packet of the media relay was dropped: RelayStats field -> `reason` label.
MEDIA_DROP_REASONS = {
    "auth_drops": "auth",
    "replay_drops": "replay",
    "malformed_drops": "malformed",
    "unknown_source_drops": "unknown_source",
    "no_destination_drops": "no_destination",
    "unkeyed_drops": "unkeyed",
    "repeats_refused": "repeat_refused",
    "send_errors": "send_error",
}


@dataclass
class RoomEventCounts:
    """What the room service does that leaves no state behind to read later."""

    unauthenticated_seen: int = 0
    unauthenticated_ejected: int = 0
    roster_pushes: int = 0


class ServerMetrics:
    """The registry /metrics serves: the state collector plus the few event-time metrics."""

    def __init__(self, app: "ServerApp") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rooms = RoomEventCounts()
        self.roster_push_seconds = Histogram(
            "stc_roster_push_seconds", "From a membership change to the signed roster queued on every tunnel",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=self.registry)
        self.registry.register(ServerStateCollector(app, self.rooms))

    def roster_pushed(self, seconds: float) -> None:
        self.rooms.roster_pushes += 1
        self.roster_push_seconds.observe(seconds)


class ServerStateCollector(Collector):
    """Yields every state-derived family on each scrape (see the module docstring)."""

    def __init__(self, app: "ServerApp", rooms: RoomEventCounts) -> None:
        self._app = app
        self._rooms = rooms

    def collect(self) -> Iterator[Metric]:
        yield from self._tunnels()
        yield from self._calls_and_media()
        yield from self._conferences()
        yield from self._trust()

    def _tunnels(self) -> Iterator[Metric]:
        tunnels = self._app.tunnels
        up = GaugeMetricFamily("stc_tunnels_up", "Authenticated client tunnels open now")
        up.add_metric([], len(tunnels.peers) if tunnels else 0)
        yield up
        accepted = CounterMetricFamily("stc_tunnels_accepted", "Client tunnels accepted (TLS and HELLO passed)")
        accepted.add_metric([], tunnels.accepted if tunnels else 0)
        yield accepted
        refused = CounterMetricFamily("stc_tunnels_refused", "Client connections refused, by reason", labels=["reason"])
        for reason, count in sorted((tunnels.refused if tunnels else {}).items()):
            refused.add_metric([reason], count)
        yield refused
        listening = GaugeMetricFamily("stc_tunnel_listening", "1 while the tunnel port accepts connections")
        listening.add_metric([], 1 if tunnels is not None and tunnels.listening else 0)
        yield listening

    def _calls_and_media(self) -> Iterator[Metric]:
        calls = GaugeMetricFamily("stc_calls", "Calls through the tunnels, by state", labels=["state"])
        sessions = list(self._app.sessions.values())
        confirmed = sum(1 for s in sessions for c in s.calls.values() if c.confirmed)
        calls.add_metric(["confirmed"], confirmed)
        calls.add_metric(["setup"], sum(len(s.calls) for s in sessions) - confirmed + sum(len(s.pending) for s in sessions))
        yield calls
        media = self._app.media
        stats = media.stats()
        open_calls = GaugeMetricFamily("stc_media_calls_open", "Calls with media relay sockets open")
        open_calls.add_metric([], media.open_calls)
        yield open_calls
        packets = CounterMetricFamily("stc_media_packets", "Media packets relayed (inbound: SRTP from clients to Asterisk; "
                                      "outbound: RTP from Asterisk protected to clients)", labels=["direction"])
        packets.add_metric(["inbound"], stats.inbound_packets)
        packets.add_metric(["outbound"], stats.outbound_packets)
        yield packets
        octets = CounterMetricFamily("stc_media_bytes", "SRTP bytes relayed", labels=["direction"])
        octets.add_metric(["inbound"], stats.inbound_bytes)
        octets.add_metric(["outbound"], stats.outbound_bytes)
        yield octets
        dropped = CounterMetricFamily("stc_media_dropped", "Media packets dropped, by reason", labels=["reason"])
        for name, reason in MEDIA_DROP_REASONS.items():
            dropped.add_metric([reason], getattr(stats, name))
        yield dropped
        keepalives = CounterMetricFamily("stc_media_keepalives", "Authenticated media keep-alives from clients")
        keepalives.add_metric([], stats.keepalives)
        yield keepalives

    def _conferences(self) -> Iterator[Metric]:
        rooms = self._app.rooms
        nodes = list(self._app.nodes.values())
        ari = GaugeMetricFamily("stc_asterisk_ari_up", "1 while the ARI event websocket is connected (every node's)")
        ami = GaugeMetricFamily("stc_asterisk_ami_up", "1 while AMI is logged in (on every node)")
        ari.add_metric([], 1 if nodes and all(service.ari.connected for service in nodes) else 0)
        ami.add_metric([], 1 if nodes and all(service.ami.up for service in nodes) else 0)
        yield ari
        yield ami
        node_up = GaugeMetricFamily("stc_asterisk_node_up", "1 while a node's ARI (or AMI) is connected",
                                    labels=["node", "api"])
        for service in nodes:
            node_up.add_metric([service.node.name, "ari"], 1 if service.ari.connected else 0)
            node_up.add_metric([service.node.name, "ami"], 1 if service.ami.up else 0)
        yield node_up
        room_count = GaugeMetricFamily("stc_rooms", "Conference rooms with a live ConfBridge")
        participants = GaugeMetricFamily("stc_room_participants", "Channels in a room", labels=["room"])
        unauthenticated = GaugeMetricFamily("stc_room_unauthenticated", "Channels in a room without an stc identity",
                                            labels=["room"])
        known = bool(nodes) and all(service.conference.status == "ok" for service in nodes)
        live = [(service, room) for service in nodes if service.conference.status == "ok"
                for room in service.conference.rooms()]
        room_count.add_metric([], len(live))
        for service, room in live:
            entries = service.conference.entries(room)
            participants.add_metric([room], len(entries))
            unauthenticated.add_metric([room], sum(1 for e in entries if not e.authenticated))
        yield room_count
        yield participants
        yield unauthenticated
        state = GaugeMetricFamily("stc_conference_state_known", "1 while the conference state is known (ARI snapshot taken)")
        state.add_metric([], 1 if known else 0)
        yield state
        admitted = CounterMetricFamily("stc_admissions", "Channels admitted by the stc-admit FastAGI")
        refused = CounterMetricFamily("stc_admission_refusals", "Channels refused by the stc-admit FastAGI, by reason",
                                      labels=["reason"])
        counters = rooms.admission.counters if rooms is not None else None
        admitted.add_metric([], counters.admitted if counters else 0)
        for reason, count in sorted((counters.refused if counters else {}).items()):
            refused.add_metric([reason], count)
        yield admitted
        yield refused
        seen = CounterMetricFamily("stc_unauthenticated_channels_seen", "Channels seen in a conference without an stc identity")
        seen.add_metric([], self._rooms.unauthenticated_seen)
        yield seen
        ejected = CounterMetricFamily("stc_unauthenticated_channels_ejected", "UNAUTHENTICATED channels hung up by policy")
        ejected.add_metric([], self._rooms.unauthenticated_ejected)
        yield ejected
        pushes = CounterMetricFamily("stc_roster_pushes", "Signed roster versions pushed (one per room and change)")
        pushes.add_metric([], self._rooms.roster_pushes)
        yield pushes

    def _trust(self) -> Iterator[Metric]:
        tunnels = self._app.tunnels
        if tunnels is None:
            return
        status = tunnels.trust_status()
        cert = GaugeMetricFamily("stc_certificate_expiry_timestamp_seconds", "When the server's TLS certificate expires")
        cert.add_metric([], status.certificate_not_after.timestamp())
        yield cert
        if status.crl_next_update is not None:
            crl = GaugeMetricFamily("stc_crl_next_update_timestamp_seconds", "The loaded CRL's nextUpdate")
            crl.add_metric([], status.crl_next_update.timestamp())
            yield crl
        if status.crl_last_update is not None:
            issued = GaugeMetricFamily("stc_crl_last_update_timestamp_seconds", "The loaded CRL's thisUpdate")
            issued.add_metric([], status.crl_last_update.timestamp())
            yield issued
        loaded = GaugeMetricFamily("stc_crl_loaded_timestamp_seconds", "When the CRL in use was last loaded or refreshed")
        loaded.add_metric([], status.loaded_at)
        yield loaded
        stale = GaugeMetricFamily("stc_crl_refresh_failing", "1 while the CRL cannot be refreshed (see the log)")
        stale.add_metric([], 1 if status.refresh_error else 0)
        yield stale
        failures = CounterMetricFamily("stc_crl_refresh_failures", "CRL refreshes that failed")
        failures.add_metric([], status.refresh_failures)
        yield failures
        closed = GaugeMetricFamily("stc_crl_failed_closed", "1 while new clients are refused because the CRL is too old")
        closed.add_metric([], 1 if status.failed_closed(time.time()) else 0)
        yield closed
