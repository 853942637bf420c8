"""Benchmark of the stc-server media relay (and of one stc-client media path).

    .venv/bin/python bench/media_relay.py --calls 100,500,1000 --seconds 10 --loop both

Two processes. The measured one runs `MediaRelay` (or `ClientMedia`) alone on its event loop;
its CPU comes from its own `getrusage`, its RSS from /proc/self/status. The driver process is
every synthetic client and the synthetic Asterisk at once: for each call it sends 50 RTP
packets a second each way (172 bytes: 12-byte header + 160 payload, the first 8 payload bytes the
send time in ns), SRTP-protected on the client side, spread evenly over the 20 ms period as
independently started calls would be. It unprotects everything the relay sends to the clients
(so the relay's SRTP is checked, not just counted) and reads the send time back out of every
payload for the latency. With `--pin` the relay runs on CPU 0 and the driver on CPU 1 (on a
machine others share, unpinned is fairer: a pinned process cannot escape a busy core).

A "direct" row per size is the driver talking to itself with no relay in between: the latency
floor of the measurement (the driver's own scheduling), to read the relay's rows against.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stc_wire.media_keys import CallKeys, KeyAgreement, Side  # noqa: E402
from stc_wire.rtp import bind_udp_pair  # noqa: E402
from stc_wire.srtp import SrtpDropped, SrtpProfile, SrtpProtector, SrtpUnprotector  # noqa: E402
from stc_wire.translator import OutboundTranslator, SrtpSender  # noqa: E402

HOST = "127.0.0.1"
PERIOD_NS = 20_000_000  # 20 ms: G.711 at 50 packets a second
PAYLOAD = 160
MIN_SLEEP_S = 0.0001  # the driver's send bursts: at most 100 us of packets at once
MAX_SLEEP_S = 0.002  # and it reads its sockets at least this often
WARMUP_S = 1.5  # latching, socket buffers, caches; not measured
GRACE_S = 0.3  # after the last send, for packets still in flight
TO_PLAIN_SSRC_BASE = 0x10000000  # flows from the client side towards Asterisk/softphone
TO_SECURE_SSRC_BASE = 0x20000000  # flows from Asterisk/server towards the client side


# ---------------------------------------------------------------- the measured process

def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured_process(role: str, loop_name: str, cpu: int | None, conn: Connection, batch: float | None = None,
                     single_port: bool = False) -> None:
    """Runs the relay (role 'server') or the client media (role 'client'), driven by `conn`."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if loop_name == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(_serve(role, conn, batch, single_port))


async def _serve(role: str, conn: Connection, batch: float | None, single_port: bool = False) -> None:
    from stc_asterisk.media import MediaRelay
    from stc_client.media import ClientMedia

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    relay = MediaRelay(wan_host=HOST, pbx_host=HOST, batch_interval=batch, single_port=0 if single_port else None)
    client = ClientMedia(HOST, wan_bind_host=HOST)

    async def command(message: tuple) -> object:
        kind = message[0]
        if kind == "open_server":
            _, keys, asterisk_address = message
            rss_before = _rss_kb()
            ports = []
            for n, call_keys in enumerate(keys):
                opened = await relay.open_call(f"call-{n}", call_keys)
                relay.set_asterisk_media(f"call-{n}", HOST, asterisk_address[1], asterisk_address[1] + 1)
                # The relay translates outbound RTP to its own SSRC and index (stc_wire.translator);
                # here it is made to pick the driver's SSRC and sequence, so the driver can match
                # what arrives by them. The translation itself still runs (and costs) as usual.
                relay._calls[f"call-{n}"].rtp_out.protect = SrtpSender(  # noqa: SLF001
                    SrtpProtector(call_keys.profile, call_keys.server_to_client_srtp, call_keys.server_to_client_srtcp),
                    OutboundTranslator(ssrc=TO_SECURE_SSRC_BASE + n, first_seq=1)).protect_rtp
                ports.append((opened.wan_rtp_port, opened.pbx_rtp_port))
            return ports, _rss_kb() - rss_before
        if kind == "open_client":
            _, call_keys, server_address = message
            rss_before = _rss_kb()
            local = await client.open_call("call-0")
            client.install_keys("call-0", call_keys, server_address[1], server_address[1] + 1)
            client._calls["call-0"].rtp_out.protect = SrtpSender(  # noqa: SLF001 - as for the server above
                SrtpProtector(call_keys.profile, call_keys.client_to_server_srtp, call_keys.client_to_server_srtcp),
                OutboundTranslator(ssrc=TO_PLAIN_SSRC_BASE, first_seq=1)).protect_rtp
            return local.softphone_rtp_port, _rss_kb() - rss_before
        if kind == "mark":
            stats = relay.stats() if role == "server" else client.stats()
            wakeups = relay.wakeups if role == "server" else 0
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return (usage.ru_utime, usage.ru_stime), stats.inbound_packets + stats.outbound_packets, stats.drops, wakeups
        if kind == "quit":
            relay.close()
            client.close()
            done.set_result(None)
            return None
        raise ValueError(kind)

    # A thread waits on the pipe (blocked, no CPU): the loop itself only relays.
    conn.send("ready")
    while not done.done():
        message = await loop.run_in_executor(None, conn.recv)
        conn.send(await command(message))


# ---------------------------------------------------------------- the driver (load generator)

@dataclass
class Flow:
    """One direction of one call as the driver sees it."""

    ssrc: int
    sock: socket.socket
    destination: tuple[str, int] | None
    protector: SrtpProtector | None
    seq: int = 0
    sent: int = 0
    sent_at: list[int] = field(default_factory=lambda: [0] * 1024)  # send time by seq % 1024


@dataclass
class Receiver:
    """What arrives on one of the driver's sockets.

    Plain RTP carries its send time in the payload. SRTP is matched to its send time by
    (SSRC, sequence number), which SRTP leaves in clear, and every `VERIFY_EVERY`-th packet of
    it is unprotected and its payload send time checked against that: the driver cannot afford
    to decrypt everything at 100k packets a second and still keep time.
    """

    sock: socket.socket
    flows: dict[int, Flow]  # by SSRC
    unprotectors: dict[int, SrtpUnprotector] = field(default_factory=dict)  # by SSRC; empty: plain
    received: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    bad: int = 0
    verified: int = 0
    first_source: tuple[str, int] | None = None


VERIFY_EVERY = 8


def _udp(rcvbuf: int = 8 << 20) -> socket.socket:
    """A driver socket on an even port whose odd neighbour is held too (RTCP lands there)."""
    sock, rtcp = bind_udp_pair(HOST)
    _held.append(rtcp)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    return sock


_held: list[socket.socket] = []


def _drain(receiver: Receiver, window: tuple[int, int]) -> None:
    recvmsg = receiver.sock.recvmsg
    unprotectors = receiver.unprotectors
    flows = receiver.flows
    start, end = window
    latencies = receiver.latencies_ns
    ancillary_size = socket.CMSG_SPACE(16)
    while True:
        try:
            data, ancillary, _, source = recvmsg(2048, ancillary_size)
        except BlockingIOError:
            return
        # The kernel's arrival time: the driver's own scheduling does not count as latency.
        now = _timespec_ns(ancillary[0][2]) if ancillary else time.time_ns()
        if receiver.first_source is None:
            receiver.first_source = source
        flow = flows.get(int.from_bytes(data[8:12], "big"))
        if flow is None:  # e.g. the client's latch keep-alive
            continue
        seq = (data[2] << 8) | data[3]
        sent_ns = flow.sent_at[seq & 1023]
        if unprotectors:
            if seq % VERIFY_EVERY == 0:
                try:
                    plain = unprotectors[flow.ssrc].unprotect_rtp(data)
                except SrtpDropped:
                    receiver.bad += 1
                    continue
                if int.from_bytes(plain[12:20], "big") != sent_ns or len(plain) != 12 + PAYLOAD:
                    receiver.bad += 1
                    continue
                receiver.verified += 1
        elif int.from_bytes(data[12:20], "big") != sent_ns:
            receiver.bad += 1
            continue
        if start <= sent_ns < end:
            receiver.received += 1
            latencies.append(now - sent_ns)


_SO_TIMESTAMPNS = 35  # Linux; not exported by the socket module
_TIMESPEC = struct.Struct("qq")


def _timespec_ns(raw: bytes) -> int:
    seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
    return int(seconds * 1_000_000_000 + nanoseconds)


def drive(
    flows: list[Flow], receivers: list[Receiver], seconds: float, on_window: object = None
) -> tuple[tuple[int, int], float]:
    """Sends every flow's packets on its 20 ms grid and receives; returns the measured window
    (wall-clock ns, the clock of the kernel's receive stamps) and the driver's own CPU over it,
    as a fraction of a core. Between sends it sleeps at least `MIN_SLEEP_S`, so at high rates
    packets leave in small bursts rather than the driver spinning on a core the relay needs."""
    header = struct.Struct("!BBHII")
    filler = bytes(PAYLOAD - 8)
    n = len(flows)
    t0 = time.time_ns() + 50_000_000
    window = (t0 + int(WARMUP_S * 1e9), t0 + int((WARMUP_S + seconds) * 1e9))
    marked = False
    driver_cpu, driver_cpu_end = 0.0, None
    # Many receiving sockets (single port: one per call): read only the ready ones.
    ready: select.epoll | None = None
    by_fd: dict[int, Receiver] = {}
    if len(receivers) > 8:
        ready = select.epoll()
        for receiver in receivers:
            by_fd[receiver.sock.fileno()] = receiver
            ready.register(receiver.sock.fileno(), select.EPOLLIN)
    stop_sending = window[1]
    index, rnd = 0, 0
    phases = [i * PERIOD_NS // n for i in range(n)]
    while True:
        now = time.time_ns()
        if not marked and now >= window[0]:
            if callable(on_window):
                on_window()
            driver_cpu = _cpu_s()
            marked = True
        if marked and driver_cpu_end is None and now >= window[1]:
            driver_cpu_end = _cpu_s()
        if now >= stop_sending + int(GRACE_S * 1e9):
            break
        due = t0 + rnd * PERIOD_NS + phases[index]
        while due <= now and due < stop_sending:
            flow = flows[index]
            flow.seq = (flow.seq + 1) & 0xFFFF
            stamp = time.time_ns()
            flow.sent_at[flow.seq & 1023] = stamp
            packet = header.pack(0x80, 0, flow.seq, flow.seq * 160, flow.ssrc) + stamp.to_bytes(8, "big") + filler
            if flow.protector is not None:
                packet = flow.protector.protect_rtp(packet)
            if flow.destination is not None:
                try:
                    flow.sock.sendto(packet, flow.destination)
                except BlockingIOError:
                    pass
                if window[0] <= stamp < window[1]:  # the receivers count by this same stamp
                    flow.sent += 1
            index += 1
            if index == n:
                index, rnd = 0, rnd + 1
            due = t0 + rnd * PERIOD_NS + phases[index]
        if ready is None:
            for receiver in receivers:
                _drain(receiver, window)
        else:
            for fd, _ in ready.poll(0):
                _drain(by_fd[fd], window)
        wait_s = (min(due, stop_sending + int(GRACE_S * 1e9)) - time.time_ns()) / 1e9
        time.sleep(min(max(wait_s, MIN_SLEEP_S), MAX_SLEEP_S))
    if ready is not None:
        ready.close()
    return window, ((driver_cpu_end or _cpu_s()) - driver_cpu) / seconds


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # us


def _keys(n: int, profile: SrtpProfile) -> list[CallKeys]:
    keys = []
    for i in range(n):
        client, server = KeyAgreement(Side.CLIENT), KeyAgreement(Side.SERVER)
        keys.append(client.derive(server.public_bytes, call_id=f"bench-{i}", stream_id="1", profile=profile))
    return keys


@dataclass
class Row:
    loop: str
    calls: int
    pps: float
    cpu_core: float  # fraction of one core
    us_per_packet: float
    loss_pct: float
    p50_us: float
    p99_us: float
    rss_kb_per_call: float
    relay_drops: int
    driver_core: float  # the load generator's own CPU: near 1.0 means it, not the relay, limits
    per_wakeup: float = float("nan")  # datagrams the relay handled per event-loop wake-up
    kernel_share: float = float("nan")  # the part of the relay's CPU spent in the kernel


def _start(role: str, loop_name: str, cpu: int | None, batch: float | None = None,
           single_port: bool = False) -> tuple[mp.process.BaseProcess, Connection]:
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=measured_process, args=(role, loop_name, cpu, child, batch, single_port), daemon=True)
    process.start()
    if not parent.poll(30) or parent.recv() != "ready":
        raise RuntimeError("measured process did not start")
    return process, parent


def _ask(conn: Connection, message: tuple, timeout: float = 120) -> object:
    conn.send(message)
    if not conn.poll(timeout):
        raise RuntimeError(f"no answer to {message[0]}")
    return conn.recv()


def _result(loop_name: str, calls: int, window: tuple[int, int], marks: list[tuple], flows: list[Flow],
            receivers: list[Receiver], rss_kb: int, driver_core: float) -> Row:
    seconds = (window[1] - window[0]) / 1e9
    (cpu0, packets0, _, wakeups0), (cpu1, packets1, drops, wakeups1) = marks
    relayed = packets1 - packets0
    sent = sum(f.sent for f in flows)
    received = sum(r.received for r in receivers)
    latencies = [lat for r in receivers for lat in r.latencies_ns]
    cpu = sum(cpu1) - sum(cpu0)
    kernel = cpu1[1] - cpu0[1]
    return Row(
        loop=loop_name,
        calls=calls,
        pps=relayed / seconds,
        cpu_core=cpu / seconds,
        us_per_packet=cpu / relayed * 1e6 if relayed else float("nan"),
        loss_pct=100 * (sent - received) / sent if sent else float("nan"),
        p50_us=_percentile(latencies, 0.50),
        p99_us=_percentile(latencies, 0.99),
        rss_kb_per_call=rss_kb / calls,
        relay_drops=drops + sum(r.bad for r in receivers),
        driver_core=driver_core,
        kernel_share=kernel / cpu if cpu else float("nan"),
        per_wakeup=relayed / (wakeups1 - wakeups0) if wakeups1 > wakeups0 else float("nan"),
    )


def bench_server(loop_name: str, calls: int, seconds: float, pin: bool, profile: SrtpProfile, batch: float | None,
                 single_port: bool = False) -> Row:
    """With `single_port`, the relay takes every call's SRTP on one wan port and tells calls apart by
    source address, so every synthetic client sends from a socket of its own."""
    process, conn = _start("server", loop_name, 0 if pin else None, batch, single_port)
    try:
        keys = _keys(calls, profile)
        client_sock, asterisk_sock = _udp(), _udp()
        client_socks = [_udp(256 << 10) for _ in range(calls)] if single_port else [client_sock] * calls
        ports, rss_kb = _ask(conn, ("open_server", keys, asterisk_sock.getsockname()))  # type: ignore[misc]
        flows, unprotectors = [], {}
        for n, ((wan_rtp, pbx_rtp), call_keys) in enumerate(zip(ports, keys)):
            flows.append(Flow(TO_PLAIN_SSRC_BASE + n, client_socks[n], (HOST, wan_rtp),
                              SrtpProtector(profile, call_keys.client_to_server_srtp, call_keys.client_to_server_srtcp)))
            flows.append(Flow(TO_SECURE_SSRC_BASE + n, asterisk_sock, (HOST, pbx_rtp), None))
            unprotectors[TO_SECURE_SSRC_BASE + n] = SrtpUnprotector(
                profile, call_keys.server_to_client_srtp, call_keys.server_to_client_srtcp)
        by_ssrc = {flow.ssrc: flow for flow in flows}
        receivers = [Receiver(asterisk_sock, by_ssrc)] + [
            Receiver(sock, by_ssrc, unprotectors) for sock in (client_socks if single_port else [client_sock])]
        marks: list[tuple] = []
        if single_port:
            _bind_sources([flow for flow in flows if flow.protector is not None], calls / 8 * 0.1, receivers[1:])
        window, driver_core = drive(flows, receivers, seconds, lambda: marks.append(_ask(conn, ("mark",))))  # type: ignore[arg-type]
        marks.append(_ask(conn, ("mark",)))  # type: ignore[arg-type]
        _ask(conn, ("quit",))
        for sock in {client_sock, *client_socks}:
            sock.close()
        asterisk_sock.close()
        return _result(loop_name, calls, window, marks, flows, receivers, rss_kb, driver_core)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


def _bind_sources(flows: list[Flow], seconds: float, receivers: list[Receiver]) -> None:
    """Single port: the relay binds a new source by trying pending calls' keys, 8 per packet; the
    clients send alone first until every call is bound. Otherwise Asterisk's packets to a client not
    yet bound are dropped before the translator numbers them, and the relay's sequence numbers no
    longer match the driver's (which it matches arrivals by)."""
    header = struct.Struct("!BBHII")
    filler = bytes(PAYLOAD - 8)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for flow in flows:
            flow.seq = (flow.seq + 1) & 0xFFFF
            stamp = time.time_ns()
            flow.sent_at[flow.seq & 1023] = stamp
            packet = header.pack(0x80, 0, flow.seq, flow.seq * 160, flow.ssrc) + stamp.to_bytes(8, "big") + filler
            assert flow.protector is not None and flow.destination is not None
            flow.sock.sendto(flow.protector.protect_rtp(packet), flow.destination)
        for receiver in receivers:
            _drain(receiver, (0, 0))
        time.sleep(PERIOD_NS / 1e9)


def bench_direct(calls: int, seconds: float, pin: bool) -> Row:
    """The driver alone: same flows, sent straight to its own other socket (no relay, no SRTP)."""
    a, b = _udp(), _udp()
    flows = []
    for n in range(calls):
        flows.append(Flow(TO_PLAIN_SSRC_BASE + n, a, b.getsockname(), None))
        flows.append(Flow(TO_SECURE_SSRC_BASE + n, b, a.getsockname(), None))
    by_ssrc = {flow.ssrc: flow for flow in flows}
    receivers = [Receiver(a, by_ssrc), Receiver(b, by_ssrc)]
    _, driver_core = drive(flows, receivers, seconds)
    a.close()
    b.close()
    latencies = [lat for r in receivers for lat in r.latencies_ns]
    sent = sum(f.sent for f in flows)
    return Row("direct", calls, sent / seconds, float("nan"), float("nan"),
               100 * (sent - sum(r.received for r in receivers)) / sent,
               _percentile(latencies, 0.5), _percentile(latencies, 0.99), float("nan"), 0, driver_core)


def bench_client(loop_name: str, seconds: float, pin: bool, profile: SrtpProfile) -> Row:
    process, conn = _start("client", loop_name, 0 if pin else None)
    try:
        call_keys = _keys(1, profile)[0]
        softphone_sock, server_sock = _udp(), _udp()
        softphone_port, rss_kb = _ask(conn, ("open_client", call_keys, server_sock.getsockname()))  # type: ignore[misc]
        by_ssrc: dict[int, Flow] = {}
        to_server = Receiver(server_sock, by_ssrc, {TO_PLAIN_SSRC_BASE: SrtpUnprotector(
            profile, call_keys.client_to_server_srtp, call_keys.client_to_server_srtcp)})
        deadline = time.monotonic() + 5
        while to_server.first_source is None:  # the client's keep-alive tells us its wan port
            assert time.monotonic() < deadline, "client sent no keep-alive"
            select.select([server_sock], [], [], 0.1)
            _drain(to_server, (0, 0))
        flows = [
            Flow(TO_PLAIN_SSRC_BASE, softphone_sock, (HOST, softphone_port), None),
            Flow(TO_SECURE_SSRC_BASE, server_sock, to_server.first_source,
                 SrtpProtector(profile, call_keys.server_to_client_srtp, call_keys.server_to_client_srtcp)),
        ]
        by_ssrc.update((flow.ssrc, flow) for flow in flows)
        receivers = [to_server, Receiver(softphone_sock, by_ssrc)]
        marks: list[tuple] = []
        window, driver_core = drive(flows, receivers, seconds, lambda: marks.append(_ask(conn, ("mark",))))  # type: ignore[arg-type]
        marks.append(_ask(conn, ("mark",)))  # type: ignore[arg-type]
        _ask(conn, ("quit",))
        softphone_sock.close()
        server_sock.close()
        return _result(loop_name, 1, window, marks, flows, receivers, rss_kb, driver_core)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


def bench_hot_path(calls: int, per_call: int, profile: SrtpProfile, single_port: bool = False) -> tuple[float, float]:
    """CPU per packet of the relay's hot path alone, each way: datagrams queued first, then
    drained with no wake-ups and nobody to wake (reaches into the relay's private reader on
    purpose). Inbound: SRTP from the clients, unprotected, to Asterisk. Outbound: RTP from
    Asterisk, translated and protected, to the clients (their addresses latched by inbound).
    With `single_port`, every client sends from a socket of its own to the relay's one wan port;
    the first packets bind the sources (not timed), then one packet per call is queued
    and drained at a time (a round of 1000 fits the port's 4 MB receive buffer, 40 would not)."""

    async def run() -> tuple[float, float]:
        from stc_asterisk.media import MediaRelay

        relay = MediaRelay(wan_host=HOST, pbx_host=HOST, single_port=0 if single_port else None)
        sink, source = _udp(64 << 20), _udp(64 << 20)
        clients = [_udp(256 << 10) for _ in range(calls)] if single_port else [source] * calls
        protectors, ports_of = [], []
        for n, call_keys in enumerate(_keys(calls, profile)):
            ports_of.append(await relay.open_call(f"call-{n}", call_keys))
            relay.set_asterisk_media(f"call-{n}", HOST, sink.getsockname()[1], sink.getsockname()[1] + 1)
            protectors.append(SrtpProtector(profile, call_keys.client_to_server_srtp, call_keys.client_to_server_srtcp))
        readiness = relay._readiness  # noqa: SLF001
        assert readiness is not None and readiness._epoll is not None  # noqa: SLF001
        asyncio.get_running_loop().remove_reader(readiness._epoll.fileno())  # noqa: SLF001
        first = 1  # the first sequence number timed
        if single_port:  # bind every client's source first (not timed): up to 8 unprotect tries a packet
            assert relay.demux is not None
            while relay.demux.bound_sources < calls and first < 2000:
                for n, protector in enumerate(protectors):
                    packet = struct.pack("!BBHII", 0x80, 0, first, first * 160, n) + bytes(PAYLOAD)
                    clients[n].sendto(protector.protect_rtp(packet), (HOST, ports_of[n].wan_rtp_port))
                while readiness._dispatch():  # noqa: SLF001
                    pass
                first += 1
            assert relay.demux.bound_sources == calls, relay.demux.bound_sources
        seqs = range(first, first + per_call)
        inbound = [[(protector.protect_rtp(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, n) + bytes(PAYLOAD)),
                     (HOST, ports.wan_rtp_port)) for seq in seqs] for n, (protector, ports) in enumerate(zip(protectors, ports_of))]
        outbound = [[(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, n) + bytes(PAYLOAD), (HOST, ports.pbx_rtp_port))
                     for seq in seqs] for n, ports in enumerate(ports_of)]
        before = relay.stats()
        rounds = [range(per_call)] if not single_port else [range(i, i + 1) for i in range(per_call)]
        spent = []
        for queued, senders in ((inbound, clients), (outbound, [sink] * calls)):
            total = 0.0
            for indexes in rounds:
                for i in indexes:
                    for n, packets in enumerate(queued):
                        senders[n].sendto(*packets[i])
                started = time.process_time()
                while readiness._dispatch():  # noqa: SLF001
                    pass
                total += time.process_time() - started
            spent.append(total)
        stats = relay.stats()
        assert stats.inbound_packets - before.inbound_packets == calls * per_call, stats
        assert stats.outbound_packets - before.outbound_packets == calls * per_call, stats
        readiness._epoll.close()  # noqa: SLF001
        for sock in {sink, source, *clients}:
            sock.close()
        timed = calls * per_call
        return spent[0] / timed * 1e6, spent[1] / timed * 1e6

    return asyncio.run(run())


def _print(rows: list[Row], title: str) -> None:
    print(f"\n{title}")
    print(f"{'loop':15} {'calls':>5} {'pkts/s':>8} {'core %':>7} {'us/pkt':>7} {'loss %':>7} "
          f"{'p50 us':>7} {'p99 us':>8} {'RSS kB/call':>11} {'drops':>6} {'driver %':>8} {'pkt/wake':>8} {'kernel %':>8}")
    for r in rows:
        print(f"{r.loop:15} {r.calls:5d} {r.pps:8.0f} {100 * r.cpu_core:7.1f} {r.us_per_packet:7.2f} "
              f"{r.loss_pct:7.3f} {r.p50_us:7.0f} {r.p99_us:8.0f} {r.rss_kb_per_call:11.1f} {r.relay_drops:6d} "
              f"{100 * r.driver_core:8.1f} {r.per_wakeup:8.1f} {100 * r.kernel_share:8.0f}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="100,500,1000", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--profile", default="AES_CM_128_HMAC_SHA1_80")
    parser.add_argument("--pin", action="store_true", help="relay on CPU 0, driver on CPU 1")
    parser.add_argument("--batch-ms", default="0",
                        help="comma-separated MediaRelay(batch_interval=...) values in ms; 0 = none")
    parser.add_argument("--single-port", action="store_true",
                        help="the relay with every call's wan media on one port ([media] single_port), each "
                             "synthetic client on a socket of its own; rows labelled LOOP-1port")
    parser.add_argument("--hot-path", action="store_true",
                        help="only measure the hot path alone (queued datagrams, no wake-ups)")
    args = parser.parse_args()

    profile = SrtpProfile.parse(args.profile)
    counts = [int(c) for c in args.calls.split(",") if c]
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("uvloop is not installed (pip install 'stc[fast]'): asyncio only")
            loops = ["asyncio"]
    pin = args.pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    print(f"profile {profile.value}, {args.seconds:g} s measured per run after {WARMUP_S} s warm-up, "
          f"{'relay on CPU 0, driver on CPU 1' if pin else 'not pinned'}; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")

    if args.hot_path:
        mode = "single port" if args.single_port else "a port pair per call"
        print(f"\nhot path alone, {mode} (40 queued datagrams per call, drained without wake-ups):")
        for calls in counts:
            inbound_us, outbound_us = bench_hot_path(calls, 40, profile, args.single_port)
            print(f"  {calls:5d} calls: {inbound_us:.2f} us of CPU per packet inbound (SRTP to RTP), "
                  f"{outbound_us:.2f} us outbound (RTP to SRTP)")
        return

    batches = [float(b) for b in args.batch_ms.split(",") if b]
    variants = [(loop_name, batch) for loop_name in loops for batch in batches]

    def label(loop_name: str, batch_ms: float) -> str:
        name = f"{loop_name}-1port" if args.single_port else loop_name
        return name if not batch_ms else f"{name}+{batch_ms:g}ms"

    rows: list[Row] = []
    for calls in counts:
        for loop_name, batch_ms in variants:
            row = bench_server(loop_name, calls, args.seconds, pin, profile, batch_ms / 1000 or None, args.single_port)
            row.loop = label(loop_name, batch_ms)
            rows.append(row)
            _print([row], f"server relay, {calls} calls, {row.loop}")
        rows.append(bench_direct(calls, args.seconds, pin))
    _print(rows, "server relay (packets/s and CPU are the relay process's; 'direct' = no relay, the driver's own floor)")

    client_rows = [bench_client(loop_name, args.seconds, pin, profile) for loop_name in loops]
    _print(client_rows, "one stc-client media path, one call")

    by_label = {(r.loop, r.calls): r for r in rows}
    base = label(loops[0], batches[0])
    others = [label(v, b) for v, b in variants][1:]
    if others:
        print(f"\nCPU per packet against {base}:")
        for calls in counts:
            ref = by_label[(base, calls)]
            ratios = ", ".join(
                f"{name} {by_label[(name, calls)].us_per_packet:.2f} us ({ref.us_per_packet / by_label[(name, calls)].us_per_packet:.2f}x)"
                for name in others
            )
            print(f"  {calls:5d} calls: {base} {ref.us_per_packet:.2f} us; {ratios}")
    print("\ntargets: 500 calls on one core with loss < 0.1 %; <= 10 us per packet; p99 < 1000 us; "
          "one client < 1 % of a core")
    for r in rows:
        if r.loop == "direct":
            continue
        verdict = [
            "us/pkt " + ("ok" if r.us_per_packet <= 10 else "MISS"),
            "p99 " + ("ok" if r.p99_us < 1000 else "MISS"),
            "loss " + ("ok" if r.loss_pct < 0.1 else "MISS"),
            "one core " + ("ok" if r.cpu_core < 1 else "MISS"),
        ]
        if r.driver_core > 0.9:
            verdict.append("driver saturated: the row measures the driver too")
        print(f"  {r.loop:15} {r.calls:5d} calls: {', '.join(verdict)}")
    for r in client_rows:
        print(f"  client {r.loop:8}: {100 * r.cpu_core:.2f} % of a core "
              f"({'ok' if r.cpu_core < 0.01 else 'MISS'})")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (others share this machine)")


if __name__ == "__main__":
    main()
