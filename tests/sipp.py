"""SIPp callers for tests: a real SIP user agent (Debian's sip-tester) driven from Python.

One `SippCaller` is one `sipp` process placing exactly one call (`-m 1`) with a scenario from
tests/sipp/. It binds only to loopback (SIP, media and its control socket), on ports chosen
free, and writes its traces into a private temporary directory that `close()` removes.

    with SippCaller(service="1000", caller="alice", codec=Codec.PCMA, play_audio=True) as alice:
        alice.start()
        ...
        assert alice.wait(timeout=20) == 0, alice.describe()
"""

from __future__ import annotations

import asyncio
import atexit
import csv
import enum
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

SIPP_BINARY = "sipp"
SCENARIO_DIR = Path(__file__).resolve().parent / "sipp"
# Dials, stays `hold_ms`, hangs up; answers a far-side BYE at any time.
UAC_CONF = SCENARIO_DIR / "uac_conf.xml"
# Dials, then waits for the far side's BYE and answers it (bounded by the SIPp timeout).
UAC_WAIT_BYE = SCENARIO_DIR / "uac_wait_bye.xml"
# Shipped with sip-tester: 7 s of PCMA (payload type 8) in 30 ms packets.
G711A_PCAP = Path("/usr/share/sip-tester/g711a.pcap")

# "Until killed or hung up by the far side": SIPp's -timeout still bounds it.
HOLD_FOREVER_MS = 24 * 3600 * 1000

# SIPp's documented exit codes (-1 and -2 arrive as 255 and 254).
EXIT_ALL_CALLS_OK = 0
EXIT_SOME_CALL_FAILED = 1
EXIT_INTERNAL_COMMAND = 97
EXIT_NO_CALL_PROCESSED = 99
EXIT_FATAL = 255
EXIT_BIND_FAILED = 254


class Codec(enum.Enum):
    """The G.711 codec a caller offers, by its static RTP payload type (RFC 3551)."""

    PCMU = 0
    PCMA = 8

    @property
    def payload_type(self) -> int:
        return self.value

    @property
    def encoding_name(self) -> str:
        return self.name


class SippError(RuntimeError):
    """SIPp could not be started or did not behave as asked."""


@dataclass(frozen=True)
class SippStats:
    """Cumulative counters from SIPp's statistics file (-trace_stat)."""

    successful_calls: int
    failed_calls: int
    outgoing_calls: int


_live_callers: weakref.WeakSet[SippCaller] = weakref.WeakSet()
_handed_out_ports: set[int] = set()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp_port_free(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_udp_port(host: str = "127.0.0.1", *, span: int = 1, even: bool = False) -> int:
    """A UDP port on `host` such that `span` consecutive ports from it are free right now.

    Ports handed out before in this process are never handed out again, so concurrent
    callers of one test run cannot collide with each other.
    """
    for _ in range(200):
        with socket.socket(_family(host), socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if even and port % 2:
            continue
        candidates = range(port, port + span)
        if port + span > 65535 or any(p in _handed_out_ports for p in candidates):
            continue
        if all(_udp_port_free(host, p) for p in candidates):
            _handed_out_ports.update(candidates)
            return port
    raise SippError(f"no {span} free consecutive UDP port(s) found on {host}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class SippCaller:
    """One `sipp` process placing one call to `service` at target_host:target_port."""

    def __init__(
        self,
        *,
        scenario: Path = UAC_CONF,
        target_host: str = "127.0.0.1",
        target_port: int = 5080,
        service: str = "1000",
        caller: str = "sipp",
        caller_name: str | None = None,
        codec: Codec = Codec.PCMA,
        play_audio: bool = False,
        hold_ms: int | None = None,
        local_ip: str = "127.0.0.1",
        timeout_s: float = 60.0,
        extra_keys: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """
        scenario: a SIPp XML scenario (UAC_CONF or UAC_WAIT_BYE, or one of your own that uses
            the same keys).
        service: the Request-URI user part (the conference room).
        caller / caller_name: From user (CallerIDNum) and display name (CallerIDName).
        codec: the one codec offered in the SDP (plus telephone-event).
        play_audio: play G711A_PCAP once the call is up (only with PCMA).
        hold_ms: how long UAC_CONF stays before its BYE; None = until the far side hangs up,
            the caller is killed, or timeout_s passes.
        timeout_s: SIPp's global -timeout; reaching it counts as a failure.
        extra_keys: more -key values for custom scenarios.
        """
        if play_audio and codec is not Codec.PCMA:
            raise ValueError(f"{G711A_PCAP.name} holds PCMA (payload type 8): cannot play it in a {codec.name} call")
        if hold_ms is not None and not 0 <= hold_ms < timeout_s * 1000:
            raise ValueError(f"hold_ms={hold_ms} must be >= 0 and shorter than timeout_s={timeout_s}")
        if not scenario.is_file():
            raise SippError(f"no SIPp scenario at {scenario}")
        self.scenario = scenario
        self.target_host = target_host
        self.target_port = target_port
        self.service = service
        self.caller = caller
        self.caller_name = caller if caller_name is None else caller_name
        self.codec = codec
        self.play_audio = play_audio
        self.hold_ms = HOLD_FOREVER_MS if hold_ms is None else hold_ms
        self.local_ip = local_ip
        self.timeout_s = timeout_s
        self.extra_keys = dict(extra_keys or {})
        self.extra_args = tuple(extra_args)
        self.sip_port = 0
        self.media_port = 0
        self.control_port = 0
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._killed = False

    # ------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        """The sipp command line (ports are chosen by start())."""
        assert self._workdir is not None, "start() chooses the ports and the trace directory"
        files = self._workdir
        keys = {
            "caller": self.caller,
            "caller_name": self.caller_name,
            "codec_pt": str(self.codec.payload_type),
            "codec_name": self.codec.encoding_name,
            **self.extra_keys,
        }
        cmd = [
            SIPP_BINARY,
            f"[{self.target_host}]:{self.target_port}" if ":" in self.target_host else f"{self.target_host}:{self.target_port}",
            "-sf", str(self.scenario),
            "-nostdin",  # it runs in the background
            "-m", "1",
            "-i", self.local_ip,
            "-p", str(self.sip_port),
            "-bind_local",  # SIP socket on local_ip, not 0.0.0.0
            "-mi", self.local_ip,
            "-mp", str(self.media_port),  # RTP in on this port; play_pcap_audio sends from it
            "-ci", self.control_ip,  # SIPp's UDP control socket defaults to 0.0.0.0:8888
            "-cp", str(self.control_port),
            "-s", self.service,
            "-d", str(self.hold_ms),
            "-aa",  # answer in-dialog OPTIONS/INFO/NOTIFY/UPDATE with 200
            "-timeout", f"{math.ceil(self.timeout_s)}s",
            "-timeout_error",
            "-trace_msg", "-message_file", str(files / "messages.log"),
            "-trace_err", "-error_file", str(files / "errors.log"),
            "-trace_screen", "-screen_file", str(files / "screen.log"),
            "-trace_stat", "-stf", str(files / "stats.csv"),
        ]
        for key, value in keys.items():
            cmd += ["-key", key, value]
        if self.play_audio:
            cmd += ["-set", "play_audio", "1"]
        cmd += self.extra_args
        return cmd

    def start(self) -> SippCaller:
        """Start sipp in the background; returns at once."""
        if self._process is not None:
            raise SippError("this SippCaller was already started")
        if shutil.which(SIPP_BINARY) is None:
            raise SippError("sipp is not installed (apt-get install sip-tester, or scripts/asterisk-lab.sh setup)")
        self._workdir = Path(tempfile.mkdtemp(prefix=f"stc-sipp-{self.caller}-"))
        self.sip_port = free_udp_port(self.local_ip)
        # SIPp binds the audio port and port+2 (video); keep RTCP's odd ports free too.
        self.media_port = free_udp_port(self.local_ip, span=4, even=True)
        self.control_port = free_udp_port(self.control_ip)
        cmd = self.command()
        logger.debug("starting %s", " ".join(cmd))
        with open(self._workdir / "stdout.log", "wb") as out:
            self._process = subprocess.Popen(
                cmd,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C goes to pytest, which cleans up
            )
        self._started_at = time.monotonic()
        _live_callers.add(self)
        return self

    @property
    def control_ip(self) -> str:
        """SIPp's control socket is IPv4 only: loopback v4 beside an IPv6 phone."""
        return "127.0.0.1" if ":" in self.local_ip else self.local_ip

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """SIPp's exit code once it has exited (0: the call succeeded), else None."""
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def wait(self, timeout: float) -> int:
        """Wait for sipp to exit; its exit code. TimeoutError (sipp left running) if it does not."""
        process = self._require_started()
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"sipp {self.caller} still running after {timeout} s\n{self.describe()}") from None

    async def wait_async(self, timeout: float) -> int:
        """wait() for asyncio tests: polls the process without blocking the loop."""
        process = self._require_started()
        deadline = time.monotonic() + timeout
        while (code := process.poll()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"sipp {self.caller} still running after {timeout} s\n{self.describe()}")
            await asyncio.sleep(0.02)
        return code

    @property
    def killed(self) -> bool:
        """kill() stopped it. (SIPp exits 0 on SIGTERM: the exit code cannot tell.)"""
        return self._killed

    def kill(self) -> None:
        """Stop sipp now (SIGTERM, then SIGKILL). It sends no BYE: for the far side the caller
        just vanishes. Idempotent."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._killed = True
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def close(self) -> None:
        """kill() and remove the trace directory (kept if STC_KEEP_SIPP_LOGS is set)."""
        self.kill()
        _live_callers.discard(self)
        if self._workdir is not None and not os.environ.get("STC_KEEP_SIPP_LOGS"):
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> SippCaller:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ what it said

    def output(self) -> str:
        """Everything sipp printed (its live screens) so far."""
        return self._trace("stdout.log")

    def screen(self) -> str:
        """The final screens (scenario, statistics) SIPp dumps when it exits."""
        return self._trace("screen.log")

    def errors(self) -> str:
        """SIPp's error log: unexpected messages, timeouts, retransmission failures."""
        return self._trace("errors.log")

    def messages(self) -> str:
        """Every SIP message sent and received, as SIPp logged them."""
        return self._trace("messages.log")

    def stats(self) -> SippStats:
        """The last cumulative counters SIPp wrote (written at start and at exit)."""
        text = self._trace("stats.csv")
        rows = list(csv.DictReader(text.splitlines(), delimiter=";"))
        if not rows:
            raise SippError(f"sipp {self.caller} wrote no statistics yet")
        last = rows[-1]
        return SippStats(
            successful_calls=int(last["SuccessfulCall(C)"]),
            failed_calls=int(last["FailedCall(C)"]),
            outgoing_calls=int(last["OutgoingCall(C)"]),
        )

    def describe(self) -> str:
        """A summary for assertion messages: command, exit code, errors, final screen."""
        lines = [
            f"sipp caller={self.caller} service={self.service} sip=:{self.sip_port} media=:{self.media_port} "
            f"returncode={self.returncode} after {time.monotonic() - self._started_at:.1f} s",
        ]
        if self._workdir is not None:
            lines.append("command: " + " ".join(self.command()))
        errors = self.errors().strip()
        if errors:
            lines.append("errors:\n" + errors[-3000:])
        screen = self.screen().strip() or self.output().strip()[-3000:]
        if screen:
            lines.append("screen:\n" + screen[:3000])
        return "\n".join(lines)

    def _trace(self, name: str) -> str:
        return "" if self._workdir is None else _read_text(self._workdir / name)

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise SippError("start() the SippCaller first")
        return self._process


@atexit.register
def _kill_leftover_callers() -> None:
    for caller in list(_live_callers):
        caller.close()
