"""Test helpers for the real Asterisk lab (scripts/asterisk-lab.sh) and its AMI.

The lab's Asterisk runs in a Debian sid chroot on the host's network namespace; these
constants match asterisk-conf/. Its ARI password and AMI secret are made at every lab start
(scripts/asterisk-lab.sh) and read from the lab root here; they are accepted from 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from panoramisk import Manager

logger = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parents[1]
LAB_SCRIPT = REPO_DIR / "scripts" / "asterisk-lab.sh"

SIP_HOST = "127.0.0.1"
SIP_PORT = 5080
CONFERENCE_CONTEXT = "stc-conference"
SIP_ENDPOINT = "stc-server"

AMI_HOST = "127.0.0.1"
AMI_PORT = 5038
AMI_USER = "stc"

ARI_HOST = "127.0.0.1"
ARI_PORT = 8088
ARI_USER = "stc"
ARI_URL = f"http://{ARI_HOST}:{ARI_PORT}/ari"

# The dialplan's AGI(agi://127.0.0.1:4573/stc-admit) in asterisk-conf/extensions.conf: the one fixed
# port, taken by a test's stc-server only while this process runs the lab (the lab lock keeps other
# test sessions out of the lab meanwhile); tests without the lab take a free port.
FASTAGI_PORT = 4573
_started_here = False
LAB_ROOT = Path(os.environ.get("STC_LAB_ROOT", "/var/lib/stc-lab/sid"))
LAB_SECRETS = LAB_ROOT / "etc" / "stc-asterisk" / "stc-secrets"

# The first setup builds a root (about 40 s on a good mirror); allow slow mirrors.
SETUP_TIMEOUT_S = 900.0

AmiMessage = dict[str, str]
EventPredicate = Callable[[AmiMessage], bool]


class LabError(RuntimeError):
    """scripts/asterisk-lab.sh failed; the message carries its stderr."""


def lab_secret(name: str) -> str:
    """The running lab's "ari-password" or "ami-secret" (made when the lab started).

    Before the lab has ever started there is none: a random stand-in, which Asterisk refuses.
    """
    try:
        return (LAB_SECRETS / name).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return f"no-lab-{name}-{os.urandom(8).hex()}"


class AmiError(RuntimeError):
    """AMI connection or login failed."""


class AmiActionError(AmiError):
    """Asterisk answered an AMI action with `Response: Error`."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"AMI action {action} failed: {message}")
        self.action = action
        self.message = message


# ---------------------------------------------------------------- the lab script


def _run_lab(*args: str, timeout: float, conf_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if conf_dir is not None:
        env["STC_ASTERISK_CONF"] = str(conf_dir)
    try:
        return subprocess.run(
            ["bash", str(LAB_SCRIPT), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"asterisk-lab.sh {' '.join(args)} did not finish within {timeout} s") from exc


def _checked(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise LabError(f"asterisk-lab.sh {what} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def lab_start(conf_dir: Path | None = None, timeout: float = SETUP_TIMEOUT_S) -> str:
    """Set the lab up if needed and boot Asterisk; returns the script's status line.

    conf_dir: a config directory to use instead of asterisk-conf/ (STC_ASTERISK_CONF).
    """
    global _started_here
    line = _checked(_run_lab("start", timeout=timeout, conf_dir=conf_dir), "start").strip()
    logger.info("%s", line)
    _started_here = True
    return line


def lab_stop(timeout: float = 60.0) -> None:
    """Stop the lab's Asterisk (idempotent)."""
    global _started_here
    _started_here = False
    _checked(_run_lab("stop", timeout=timeout), "stop")


def lab_started_here() -> bool:
    """True while this process runs the lab (started by lab_start, not stopped since)."""
    return _started_here


def lab_running() -> bool:
    return _run_lab("status", timeout=30.0).returncode == 0


def asterisk_rx(command: str, timeout: float = 30.0) -> str:
    """The output of `asterisk -rx COMMAND` in the running lab."""
    return _checked(_run_lab("rx", command, timeout=timeout), f"rx {command!r}")


def asterisk_version() -> str:
    """The running Asterisk's version, e.g. '22.10.1+dfsg+~cs6.17.60671434-1'."""
    text = asterisk_rx("core show version")
    match = re.match(r"Asterisk (\S+)", text.strip())
    if match is None:
        raise LabError(f"cannot read a version from {text!r}")
    return match.group(1)


# ---------------------------------------------------------------- AMI


def _plain(message: Mapping[str, Any]) -> AmiMessage:
    """A panoramisk Message as a plain dict; repeated headers are joined by newlines."""
    plain: AmiMessage = {}
    for key, value in message.items():
        if key == "content" and not value:
            continue
        plain[key] = "\n".join(value) if isinstance(value, list) else str(value)
    return plain


def event_is(name: str, **fields: str) -> EventPredicate:
    """A predicate: the event is called `name` and carries each of `fields` with that value."""

    def matches(event: AmiMessage) -> bool:
        return event.get("Event", "").lower() == name.lower() and all(
            event.get(key) == value for key, value in fields.items()
        )

    matches.__name__ = f"event_is({name!r}, {fields!r})"
    return matches


class AmiClient:
    """An AMI session on panoramisk that records every event from the moment of login.

    Create and use it inside a running event loop:

        async with AmiClient() as ami:
            mark = ami.mark()
            ...  # make something happen
            joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference="1000"), 3,
                                             timeout=15, since=mark)
    """

    def __init__(
        self,
        *,
        host: str = AMI_HOST,
        port: int = AMI_PORT,
        username: str = AMI_USER,
        secret: str | None = None,
    ) -> None:
        secret = secret if secret is not None else lab_secret("ami-secret")
        self._config = {"host": host, "port": port, "username": username, "secret": secret}
        self._manager: Manager | None = None
        self.events: list[AmiMessage] = []
        # Replaced after every event; a waiter holding the old one is woken by its set().
        self._new_event = asyncio.Event()

    async def connect(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        manager = Manager(loop=loop, ping_delay=30, ping_interval=30, **self._config)
        manager.register_event("*", self._record)
        self._manager = manager
        # panoramisk reconnects forever (call_later(self.connect)) after a failed or lost
        # connection; a test client must stop doing so once closed.
        panoramisk_connect = manager.connect

        def connect_unless_closed(*args: Any, **kwargs: Any) -> Any:
            return panoramisk_connect(*args, **kwargs) if self._manager is manager else None

        manager.connect = connect_unless_closed  # type: ignore[method-assign]
        try:
            await asyncio.wait_for(manager.connect(), timeout)
            login = manager.authenticated_future
            if login is None:
                raise AmiError("panoramisk did not send a Login action")
            response = await asyncio.wait_for(login, timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self.close()
            raise AmiError(f"cannot reach AMI at {self._config['host']}:{self._config['port']}: {exc!r}") from exc
        if not response.success:
            self.close()
            raise AmiError(f"AMI login as {self._config['username']!r} refused: {response.get('Message', response)}")

    def close(self) -> None:
        manager = self._manager
        if manager is None:
            return
        self._manager = None  # first: disables the reconnection (see connect)
        manager.close()

    async def __aenter__(self) -> AmiClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _record(self, _manager: Manager, message: Mapping[str, Any]) -> None:
        self.events.append(_plain(message))
        self._new_event.set()
        self._new_event = asyncio.Event()

    def mark(self) -> int:
        """The index the next event will get: pass it as `since` to ignore older events."""
        return len(self.events)

    async def wait_for_count(
        self, predicate: EventPredicate, count: int, *, timeout: float, since: int = 0
    ) -> list[AmiMessage]:
        """The first `count` events from index `since` on that match; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = [event for event in self.events[since:] if predicate(event)]
            if len(found) >= count:
                return found[:count]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = [event.get("Event") for event in self.events[since:]]
                raise TimeoutError(
                    f"{len(found)} of {count} events matching {getattr(predicate, '__name__', predicate)} "
                    f"within {timeout} s; events seen: {names}"
                )
            new_event = self._new_event
            try:
                await asyncio.wait_for(new_event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_for(self, predicate: EventPredicate, *, timeout: float, since: int = 0) -> AmiMessage:
        """The first event from index `since` on that matches; TimeoutError otherwise."""
        return (await self.wait_for_count(predicate, 1, timeout=timeout, since=since))[0]

    async def action(self, fields: Mapping[str, str], *, timeout: float = 10.0) -> list[AmiMessage]:
        """Send an action; its response followed by any list events. AmiActionError on Error."""
        if self._manager is None:
            raise AmiError("AMI client is not connected")
        reply = await asyncio.wait_for(self._manager.send_action(dict(fields)), timeout)
        messages = [_plain(m) for m in (reply if isinstance(reply, list) else [reply])]
        if messages and messages[0].get("Response") == "Error":
            raise AmiActionError(fields.get("Action", "?"), messages[0].get("Message", ""))
        return messages

    async def confbridge_list(self, room: str, *, timeout: float = 10.0) -> list[AmiMessage]:
        """One ConfbridgeList event per member of `room` (no members or no room: [])."""
        try:
            messages = await self.action({"Action": "ConfbridgeList", "Conference": room}, timeout=timeout)
        except AmiActionError as exc:
            # app_confbridge's wording for "nothing to list".
            if exc.message in ("No active conferences.", "No Conference by that name found."):
                return []
            raise
        return [m for m in messages if m.get("Event") == "ConfbridgeList"]

    async def getvar(self, channel: str, variable: str, *, timeout: float = 10.0) -> str:
        """A channel variable or dialplan function, e.g. CHANNEL(audionativeformat)."""
        messages = await self.action({"Action": "Getvar", "Channel": channel, "Variable": variable}, timeout=timeout)
        return messages[0].get("Value", "")


async def ami_confbridge_list(room: str, client: AmiClient | None = None) -> list[AmiMessage]:
    """The members of ConfBridge `room` via AMI ConfbridgeList (one short session if no client)."""
    if client is not None:
        return await client.confbridge_list(room)
    async with AmiClient() as ami:
        return await ami.confbridge_list(room)
