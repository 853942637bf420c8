"""Benchmark: the media relay's calls at < 0.1 % loss with 1 and with 2 stc-server processes.

    .venv/bin/python bench/scale_out.py --processes 1,2 --calls 400,800,1200,1600 --seconds 5

Each relay process runs `MediaRelay` alone on its event loop with its own media port ranges
(as `[tunnel] reuse_port` processes on one machine would: process i takes its own wan and
pbx ranges from port 20000 up, see port_ranges()). The calls of a run are split evenly over
the processes. Each relay process gets its own driver process (bench/media_relay.py's load
machinery: 50 packets a second each way per call, SRTP on the client side, every packet
checked on arrival), so the load generator grows with the relay and does not become the limit
itself before the relay does. Loss counts every packet sent in the measured window that did
not come back through the relay; a run is "ok" below 0.1 %.

On a machine with C cores, 1 relay + 1 driver and 2 relays + 2 drivers compete for the same C
cores: with C = 2 the drivers take about half of them. The table prints every process's CPU
so the limit can be read off it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_relay import (  # noqa: E402
    HOST,
    TO_PLAIN_SSRC_BASE,
    TO_SECURE_SSRC_BASE,
    Flow,
    Receiver,
    _ask,
    _keys,
    _percentile,
    _udp,
    drive,
)
from stc_wire.srtp import SrtpProfile, SrtpProtector, SrtpUnprotector  # noqa: E402
from stc_wire.translator import OutboundTranslator, SrtpSender  # noqa: E402

LOSS_LIMIT_PCT = 0.1


def port_ranges(index: int, calls: int) -> tuple[range, range]:
    """Process `index`'s own wan and pbx ranges (a pair per call on each side, with room to spare)."""
    span = max(4000, 10 * calls)  # sparse: the relay tries 64 pairs from a random start
    base = 20000 + index * 2 * span
    return range(base, base + span), range(base + span, base + 2 * span)


# ---------------------------------------------------------------- a relay process

def relay_process(index: int, calls: int, conn: Connection) -> None:
    asyncio.run(_relay(index, calls, conn))


async def _relay(index: int, calls: int, conn: Connection) -> None:
    from stc_asterisk.media import MediaRelay

    wan_ports, pbx_ports = port_ranges(index, calls)
    relay = MediaRelay(wan_host=HOST, pbx_host=HOST, wan_ports=wan_ports, pbx_ports=pbx_ports)
    loop = asyncio.get_running_loop()
    conn.send("ready")
    while True:
        message = await loop.run_in_executor(None, conn.recv)  # a blocked thread: the loop only relays
        kind = message[0]
        if kind == "open":
            _, keys, asterisk_port, first_ssrc = message
            ports = []
            for n, call_keys in enumerate(keys):
                name = f"call-{n}"
                opened = await relay.open_call(name, call_keys)
                relay.set_asterisk_media(name, HOST, asterisk_port, asterisk_port + 1)
                # As in bench/media_relay.py: the relay's outbound translation picks the driver's
                # SSRC and sequence so the driver can match what arrives; it still runs and costs.
                relay._calls[name].rtp_out.protect = SrtpSender(  # noqa: SLF001
                    SrtpProtector(call_keys.profile, call_keys.server_to_client_srtp, call_keys.server_to_client_srtcp),
                    OutboundTranslator(ssrc=first_ssrc + n, first_seq=1)).protect_rtp
                if opened.wan_rtp_port not in wan_ports or opened.pbx_rtp_port not in pbx_ports:
                    raise RuntimeError(f"relay {index}: port outside its range: {opened}")
                ports.append((opened.wan_rtp_port, opened.pbx_rtp_port))
            conn.send(ports)
        elif kind == "mark":
            stats = relay.stats()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            conn.send((usage.ru_utime + usage.ru_stime, stats.inbound_packets + stats.outbound_packets, stats.drops))
        elif kind == "quit":
            relay.close()
            conn.send(None)
            return


# ---------------------------------------------------------------- its driver process

@dataclass
class Share:
    """One relay process's part of a run, as its driver measured it."""

    sent: int
    received: int
    bad: int
    latencies_us: list[float]
    relayed: int
    relay_cpu_s: float
    relay_drops: int
    driver_core: float
    seconds: float


def driver_process(index: int, calls: int, seconds: float, profile_name: str, start_ns: int, relay: Connection,
                   out: Connection) -> None:
    profile = SrtpProfile.parse(profile_name)
    keys = _keys(calls, profile)
    client_sock, asterisk_sock = _udp(), _udp()
    plain_base, secure_base = TO_PLAIN_SSRC_BASE + index * 100_000, TO_SECURE_SSRC_BASE + index * 100_000
    ports = _ask(relay, ("open", keys, asterisk_sock.getsockname()[1], secure_base))
    flows, unprotectors = [], {}
    for n, ((wan_rtp, pbx_rtp), call_keys) in enumerate(zip(ports, keys)):  # type: ignore[call-overload]
        flows.append(Flow(plain_base + n, client_sock, (HOST, wan_rtp),
                          SrtpProtector(profile, call_keys.client_to_server_srtp, call_keys.client_to_server_srtcp)))
        flows.append(Flow(secure_base + n, asterisk_sock, (HOST, pbx_rtp), None))
        unprotectors[secure_base + n] = SrtpUnprotector(profile, call_keys.server_to_client_srtp,
                                                        call_keys.server_to_client_srtcp)
    by_ssrc = {flow.ssrc: flow for flow in flows}
    receivers = [Receiver(asterisk_sock, by_ssrc), Receiver(client_sock, by_ssrc, unprotectors)]
    out.send("opened")
    time.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9))  # every driver starts on the same tick
    marks: list[tuple[float, int, int]] = []
    window, driver_core = drive(flows, receivers, seconds, lambda: marks.append(_ask(relay, ("mark",))))  # type: ignore[arg-type]
    marks.append(_ask(relay, ("mark",)))  # type: ignore[arg-type]
    (cpu0, packets0, _), (cpu1, packets1, drops) = marks
    out.send(Share(
        sent=sum(f.sent for f in flows), received=sum(r.received for r in receivers),
        bad=sum(r.bad for r in receivers), latencies_us=[lat / 1000 for r in receivers for lat in r.latencies_ns],
        relayed=packets1 - packets0, relay_cpu_s=cpu1 - cpu0, relay_drops=drops, driver_core=driver_core,
        seconds=(window[1] - window[0]) / 1e9,
    ))


# ---------------------------------------------------------------- one run

@dataclass
class Row:
    processes: int
    calls: int
    pps: float
    relay_cores: float  # all relay processes together, in cores
    driver_cores: float
    loss_pct: float
    p99_us: float
    bad: int

    @property
    def ok(self) -> bool:
        return self.loss_pct < LOSS_LIMIT_PCT and self.bad == 0


def run(processes: int, calls: int, seconds: float, profile: SrtpProfile) -> Row:
    context = mp.get_context("spawn")
    relays, drivers, pipes = [], [], []
    try:
        split = [calls // processes + (1 if i < calls % processes else 0) for i in range(processes)]
        relay_conns = []
        for i in range(processes):
            parent, child = context.Pipe()
            relay = context.Process(target=relay_process, args=(i, split[i], child), daemon=True)
            relay.start()
            relays.append(relay)
            if not parent.poll(30) or parent.recv() != "ready":
                raise RuntimeError(f"relay {i} did not start")
            relay_conns.append((parent, child))
        start_ns = time.time_ns() + int((3 + calls / 500) * 1e9)  # after every driver opened its calls
        for i in range(processes):
            result_parent, result_child = context.Pipe()
            driver = context.Process(target=driver_process, daemon=True, args=(
                i, split[i], seconds, profile.value, start_ns, relay_conns[i][0], result_child))
            driver.start()
            drivers.append(driver)
            pipes.append(result_parent)
        for i, pipe in enumerate(pipes):
            if not pipe.poll(60) or pipe.recv() != "opened":
                raise RuntimeError(f"driver {i} did not open its calls")
        if time.time_ns() > start_ns:
            raise RuntimeError("the drivers opened their calls too late to start together")
        shares: list[Share] = []
        for i, pipe in enumerate(pipes):
            if not pipe.poll(seconds + 60):
                raise RuntimeError(f"no result from driver {i}")
            shares.append(pipe.recv())
        for parent, _ in relay_conns:
            _ask(parent, ("quit",))
    finally:
        for process in drivers + relays:
            process.join(10)
            if process.is_alive():
                process.kill()
    sent = sum(s.sent for s in shares)
    received = sum(s.received for s in shares)
    window = max(s.seconds for s in shares)
    return Row(
        processes=processes, calls=calls,
        pps=sum(s.relayed for s in shares) / window,
        relay_cores=sum(s.relay_cpu_s for s in shares) / window,
        driver_cores=sum(s.driver_core for s in shares),
        loss_pct=100 * (sent - received) / sent if sent else float("nan"),
        p99_us=_percentile([int(v * 1000) for s in shares for v in s.latencies_us], 0.99),
        bad=sum(s.bad + s.relay_drops for s in shares),
    )


def _print_row(row: Row) -> None:
    print(f"{row.processes:9d} {row.calls:6d} {row.pps:9.0f} {100 * row.relay_cores:10.1f} {100 * row.driver_cores:10.1f} "
          f"{row.loss_pct:7.3f} {row.p99_us:8.0f} {row.bad:5d}  {'ok' if row.ok else 'LOSS'}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated relay process counts")
    parser.add_argument("--calls", default="400,800,1200,1600", help="comma-separated total call counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--profile", default="AES_CM_128_HMAC_SHA1_80")
    args = parser.parse_args()
    profile = SrtpProfile.parse(args.profile)
    counts = [int(c) for c in args.calls.split(",") if c]
    process_counts = [int(p) for p in args.processes.split(",") if p]
    print(f"profile {profile.value}; {args.seconds:g} s measured per run; one driver process per relay process; "
          f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'processes':>9} {'calls':>6} {'pkts/s':>9} {'relays %':>10} {'drivers %':>10} {'loss %':>7} "
          f"{'p99 us':>8} {'bad':>5}")
    rows = []
    for calls in counts:
        for processes in process_counts:
            row = run(processes, calls, args.seconds, profile)
            rows.append(row)
            _print_row(row)
    print(f"\nmost calls at < {LOSS_LIMIT_PCT} % loss (of the sizes tried):")
    for processes in process_counts:
        good = [r.calls for r in rows if r.processes == processes and r.ok]
        print(f"  {processes} process(es): {max(good) if good else 'none'}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (others share this machine)")


if __name__ == "__main__":
    main()
