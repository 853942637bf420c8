"""baresip, a real softphone nobody here wrote, headless, driven from Python (Debian's baresip-core).

One `Baresip` is one process with its own config folder: SIP on a free loopback port, no
REGISTER, audio from a WAV file (`aufile`), a null player (`aubridge`), and the `sndfile` filter
recording what it sends and what it hears as WAV files in its folder. It is controlled over
`ctrl_tcp` (JSON in netstrings), whose events are collected as they come.

    async with Baresip(tmp_path / "alice", codecs=("opus/48000/2",), source=talk_wav) as phone:
        await phone.dial("sip:1000@127.0.0.1:5062")
        await phone.wait_event("CALL_ESTABLISHED")
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import wave
from pathlib import Path
from types import TracebackType
from typing import Any

BARESIP = "baresip"
MODULES = Path("/usr/lib/baresip/modules")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def talk_wav(path: Path, *, seconds: int = 40, rate: int = 48000) -> Path:
    """A talker's source: 1 s of a 440 Hz tone, then 1 s of digital silence, again and again."""
    samples = bytearray()
    for i in range(rate * seconds):
        t = i / rate
        value = int(9000 * math.sin(2 * math.pi * 440 * t)) if int(t) % 2 == 0 else 0
        samples += struct.pack("<h", value)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(samples))
    return path


def silence_wav(path: Path, *, seconds: int = 40, rate: int = 48000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * rate * seconds))
    return path


def block_rms(path: Path, block_s: float = 0.1) -> list[float]:
    """RMS of each `block_s` of a 16-bit WAV (all channels together)."""
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        step = max(1, int(wav.getframerate() * block_s)) * wav.getnchannels()
    values = struct.unpack(f"<{len(frames) // 2}h", frames[: len(frames) // 2 * 2])
    return [math.sqrt(sum(v * v for v in values[i:i + step]) / step)
            for i in range(0, len(values) - step + 1, step)]


class BaresipError(RuntimeError):
    pass


class Baresip:
    """One headless baresip; see the module docstring."""

    def __init__(self, workdir: Path, *, user: str, codecs: tuple[str, ...], source: Path,
                 rtcp_mux: bool | None = None) -> None:
        if shutil.which(BARESIP) is None:
            raise BaresipError("baresip is not installed (scripts/test.sh installs baresip-core)")
        self.workdir = workdir
        self.user = user
        self.codecs = codecs
        self.source = source
        self.rtcp_mux = rtcp_mux
        self.sip_port = free_port()
        self.ctrl_port = free_port(socket.SOCK_STREAM)
        self.events: list[dict[str, Any]] = []
        self._responses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._event_seen = asyncio.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._token = 0

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = {
            "poll_method": "epoll",
            "sip_listen": f"127.0.0.1:{self.sip_port}",
            "sip_transports": "udp",
            "call_local_timeout": "120",
            "audio_player": "aubridge,nil",
            "audio_source": f"aufile,{self.source}",
            "audio_alert": "aubridge,nil",
            "ausrc_srate": "48000",
            "ausrc_channels": "1",
            "audio_codecs": ",".join(self.codecs),
            "net_interface": "127.0.0.1",
            "module_path": str(MODULES),
            "ctrl_tcp_listen": f"127.0.0.1:{self.ctrl_port}",
        }
        modules = ["g711.so", "g722.so", "opus.so", "aufile.so", "aubridge.so", "sndfile.so"]
        apps = ["account.so", "menu.so", "ctrl_tcp.so"]
        text = "".join(f"{key}\t{value}\n" for key, value in lines.items())
        text += "".join(f"module\t{m}\n" for m in modules) + "".join(f"module_app\t{m}\n" for m in apps)
        (self.workdir / "config").write_text(text)
        params = f";regint=0;audio_codecs={','.join(self.codecs)}"
        if self.rtcp_mux is not None:
            params += f";rtcp_mux={'yes' if self.rtcp_mux else 'no'}"
        (self.workdir / "accounts").write_text(f"<sip:{self.user}@127.0.0.1:{self.sip_port}>{params}\n")

    async def start(self) -> Baresip:
        self._write_config()
        log = open(self.workdir / "baresip.log", "wb")  # noqa: SIM115 - kept for the process's life
        self._process = subprocess.Popen([BARESIP, "-f", str(self.workdir)], cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for _ in range(100):
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
                break
            except OSError:
                if self._process.poll() is not None:
                    raise BaresipError(f"baresip exited at start:\n{self.log()}") from None
                await asyncio.sleep(0.1)
        else:
            raise BaresipError(f"baresip's ctrl_tcp did not come up:\n{self.log()}")
        self._pump = asyncio.create_task(self._read())
        return self

    def log(self) -> str:
        path = self.workdir / "baresip.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            try:
                length = await self._reader.readuntil(b":")
                data = await self._reader.readexactly(int(length[:-1]) + 1)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                return
            message = json.loads(data[:-1])
            if message.get("event"):
                self.events.append(message)
                self._event_seen.set()
            elif message.get("response"):
                await self._responses.put(message)

    async def command(self, command: str, params: str = "") -> dict[str, Any]:
        assert self._writer is not None
        self._token += 1
        body = json.dumps({"command": command, "params": params, "token": str(self._token)}).encode()
        self._writer.write(str(len(body)).encode() + b":" + body + b",")
        await self._writer.drain()
        response = await asyncio.wait_for(self._responses.get(), 10)
        if not response.get("ok", False):
            raise BaresipError(f"baresip refused {command} {params}: {response}")
        return response

    async def dial(self, uri: str) -> None:
        await self.command("dial", uri)

    async def wait_event(self, kind: str, timeout: float = 20, since: int = 0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[since:]:
                    if event.get("type") == kind:
                        return event
                self._event_seen.clear()
                await self._event_seen.wait()

    def recordings(self) -> tuple[Path, Path]:
        """(what it sent, what it heard): sndfile's -enc and -dec WAV files of the last call."""
        sent = sorted(self.workdir.glob("dump-*-enc.wav"))
        heard = sorted(self.workdir.glob("dump-*-dec.wav"))
        if not sent or not heard:
            raise BaresipError(f"no sndfile recordings in {self.workdir}: {os.listdir(self.workdir)}")
        return sent[-1], heard[-1]

    async def close(self) -> None:
        if self._writer is not None:
            try:
                await asyncio.wait_for(self.command("quit"), 2)
            except (BaresipError, OSError, asyncio.TimeoutError):
                pass
            self._writer.close()
        if self._pump is not None:
            self._pump.cancel()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    async def __aenter__(self) -> Baresip:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
