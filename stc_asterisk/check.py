"""`stc-server check`: the settings against the live Asterisk, each failure with what to change where.

Checks, in order (a later one that needs an earlier one is reported as not run):
AMI login, the modules stc needs, the `stc-server` PJSIP endpoint, the dialplan of its context
(the stc-admit AGI before every ConfBridge, on the FastAGI address of the settings), ARI login
and the ARI application, and the FastAGI port as Asterisk reaches it (a call to a throw-away
extension that runs the AGI against a listener of this command).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, fields, replace

import aiohttp

from .config import AsteriskNode, AsteriskSettings, ServerConfig

ENDPOINT = "stc-server"
REQUIRED_MODULES = ("chan_pjsip.so", "res_pjsip_header_funcs.so", "app_confbridge.so", "bridge_softmix.so", "res_agi.so",
                    "res_ari.so", "res_ari_bridges.so", "res_ari_channels.so", "res_ari_events.so",
                    "res_http_websocket.so", "pbx_config.so")
_AGI_URL = re.compile(r"agi://([^/:,]+)(?::(\d+))?/stc-admit\b")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str  # on failure: what is wrong, what to change and in which file

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


class AmiError(Exception):
    pass


class AmiSession:
    """Just enough AMI for a one-shot check: log in, send actions, read their responses and event lists."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = 0

    @classmethod
    async def login(cls, settings: AsteriskSettings, timeout: float) -> "AmiSession":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(settings.ami_host, settings.ami_port), timeout)
        session = cls(reader, writer)
        banner = await asyncio.wait_for(reader.readline(), timeout)
        if not banner.startswith(b"Asterisk Call Manager"):
            writer.close()
            raise AmiError(f"{settings.ami_host}:{settings.ami_port} is not AMI (it said {banner[:40]!r})")
        [response] = await session.action({"Action": "Login", "Username": settings.ami_user,
                                           "Secret": settings.ami_secret, "Events": "off"}, timeout=timeout)
        if response.get("Response") != "Success":
            writer.close()
            raise AmiError(response.get("Message", "login refused"))
        return session

    async def _block(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        while True:
            line = (await self._reader.readline()).decode("utf-8", "replace")
            if not line:
                raise AmiError("Asterisk closed the AMI connection")
            line = line.rstrip("\r\n")
            if not line:
                if fields:
                    return fields
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())

    async def action(self, fields: dict[str, str], *, timeout: float = 10.0) -> list[dict[str, str]]:
        """The response, then the events of its list (if it starts one) up to the list's end."""
        self._ids += 1
        action_id = f"stc-check-{self._ids}"
        text = "".join(f"{k}: {v}\r\n" for k, v in {**fields, "ActionID": action_id}.items()) + "\r\n"
        self._writer.write(text.encode())
        async with asyncio.timeout(timeout):
            while True:
                response = await self._block()
                if response.get("ActionID") == action_id and "Response" in response:
                    break
            blocks = [response]
            if response.get("EventList") != "start" and "will follow" not in response.get("Message", ""):
                return blocks
            while True:
                event = await self._block()
                if event.get("ActionID") != action_id:
                    continue
                blocks.append(event)
                if event.get("EventList") == "Complete":
                    return blocks

    async def close(self) -> None:
        try:
            self._writer.write(b"Action: Logoff\r\n\r\n")
            self._writer.close()
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class Checker:
    def __init__(self, config: ServerConfig, *, config_name: str = "server.toml", timeout: float = 5.0) -> None:
        self.config = config
        self.ast = config.asterisk
        self.config_name = config_name
        self.timeout = timeout
        self.results: list[CheckResult] = []
        self._ami: AmiSession | None = None
        self._context: str | None = None

    def _add(self, name: str, ok: bool, detail: str) -> bool:
        self.results.append(CheckResult(name, ok, detail))
        return ok

    async def run(self) -> list[CheckResult]:
        try:
            if await self._ami_login():
                await self._modules()
                if await self._endpoint():
                    await self._dialplan()
            else:
                self._add("modules, endpoint, dialplan, FastAGI", False, "not checked: they are read through AMI")
            if await self._ari_login():
                await self._ari_app()
            if self._ami is not None:
                await self._fastagi()
        finally:
            if self._ami is not None:
                await self._ami.close()
        return self.results

    # -- AMI -------------------------------------------------------------------------------------
    async def _ami_login(self) -> bool:
        where = f"{self.ast.ami_host}:{self.ast.ami_port}"
        try:
            self._ami = await AmiSession.login(self.ast, self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            return self._add("AMI login", False, f"cannot reach AMI at {where} ({exc or type(exc).__name__}): enable it in "
                             f"/etc/asterisk/manager.conf ([general] enabled = yes, port, bindaddr) or set [asterisk] "
                             f"ami_host/ami_port in {self.config_name}")
        except AmiError as exc:
            return self._add("AMI login", False, f"Asterisk refused user {self.ast.ami_user!r} at {where} ({exc}): make "
                             f"[asterisk] ami_user/ami_secret in {self.config_name} match a user section of "
                             f"/etc/asterisk/manager.conf (its secret, and permit for this host)")
        return self._add("AMI login", True, f"user {self.ast.ami_user!r} at {where}")

    async def _modules(self) -> None:
        assert self._ami is not None
        missing = []
        for module in REQUIRED_MODULES:
            [response] = await self._ami.action({"Action": "ModuleCheck", "Module": module})
            if response.get("Response") != "Success":
                missing.append(module)
        if missing:
            self._add("modules", False, f"not loaded: {', '.join(missing)}: add `require = NAME` for each to "
                      f"/etc/asterisk/modules.conf (see asterisk-conf/modules.conf) and restart Asterisk")
        else:
            self._add("modules", True, f"{len(REQUIRED_MODULES)} loaded")

    async def _endpoint(self) -> bool:
        assert self._ami is not None
        blocks = await self._ami.action({"Action": "PJSIPShowEndpoint", "Endpoint": ENDPOINT})
        detail = next((b for b in blocks if b.get("Event") == "EndpointDetail"), None)
        if detail is None:
            return self._add("PJSIP endpoint", False, f"no endpoint {ENDPOINT!r}: add it, with an identify section "
                             f"matching the stc-server's address, to /etc/asterisk/pjsip.conf (see asterisk-conf/pjsip.conf)")
        self._context = detail.get("Context") or ""
        return self._add("PJSIP endpoint", True, f"{ENDPOINT!r}, context {self._context!r}")

    async def _dialplan(self) -> None:
        assert self._ami is not None and self._context is not None
        blocks = await self._ami.action({"Action": "ShowDialPlan", "Context": self._context})
        steps: dict[str, list[tuple[int, str, str]]] = {}
        for b in blocks:
            if b.get("Event") == "ListDialplan" and b.get("Context") == self._context and b.get("Priority", "").isdigit():
                steps.setdefault(b.get("Extension", ""), []).append((int(b["Priority"]), b.get("Application", ""),
                                                                    b.get("AppData", "")))
        where = f"/etc/asterisk/extensions.conf, context [{self._context}]"
        rooms = {ext: sorted(s) for ext, s in steps.items() if any(app.lower() == "confbridge" for _, app, _ in s)}
        if not rooms:
            self._add("dialplan", False, f"no ConfBridge in {where}: the rooms must be there (see asterisk-conf/extensions.conf)")
            return
        problems = []
        for ext, ordered in sorted(rooms.items()):
            first_conf = next(p for p, app, _ in ordered if app.lower() == "confbridge")
            agis = [(p, data) for p, app, data in ordered if app.lower() == "agi" and "stc-admit" in data and p < first_conf]
            if not agis:
                problems.append(f"extension {ext}: ConfBridge (priority {first_conf}) is not preceded by "
                                f"AGI(agi://{self.ast.fastagi_host}:{self.ast.fastagi_port}/stc-admit,${{EXTEN}})")
                continue
            match = _AGI_URL.search(agis[0][1])
            port = int(match.group(2) or 4573) if match else None
            if match and port != self.ast.fastagi_port:
                problems.append(f"extension {ext}: the AGI goes to port {port}, but stc-server listens on "
                                f"{self.ast.fastagi_port} ([asterisk] fastagi_port in {self.config_name})")
        if problems:
            self._add("dialplan", False, "; ".join(problems) + f": fix it in {where} (see asterisk-conf/extensions.conf)")
        else:
            self._add("dialplan", True, f"stc-admit before ConfBridge in {', '.join(sorted(rooms))} of [{self._context}]")

    # -- ARI -------------------------------------------------------------------------------------
    def _ari(self, path: str) -> str:
        return self.ast.ari_url.rstrip("/").removesuffix("/ari") + "/ari" + path

    async def _ari_login(self) -> bool:
        auth = {"Authorization": aiohttp.encode_basic_auth(self.ast.ari_user, self.ast.ari_password)}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
                async with http.get(self._ari("/asterisk/info"), headers=auth) as response:
                    status = response.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return self._add("ARI login", False, f"cannot reach ARI at {self.ast.ari_url} ({type(exc).__name__}): enable "
                             f"the HTTP server in /etc/asterisk/http.conf (enabled, bindaddr, bindport) and ARI in "
                             f"/etc/asterisk/ari.conf, or set [asterisk] ari_url in {self.config_name}")
        if status == 401:
            return self._add("ARI login", False, f"ARI refused user {self.ast.ari_user!r}: make [asterisk] "
                             f"ari_user/ari_password in {self.config_name} match a `type = user` section of /etc/asterisk/ari.conf")
        if status != 200:
            return self._add("ARI login", False, f"ARI answered HTTP {status} at {self._ari('/asterisk/info')}: check "
                             f"[asterisk] ari_url in {self.config_name}")
        return self._add("ARI login", True, f"user {self.ast.ari_user!r} at {self.ast.ari_url}")

    async def _ari_app(self) -> None:
        """Registers the application the way stc-server does (its event websocket), then asks ARI for it."""
        auth = {"Authorization": aiohttp.encode_basic_auth(self.ast.ari_user, self.ast.ari_password)}
        app = f"{self.ast.ari_app}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http:
                async with http.ws_connect(self._ari("/events"), params={"app": app, "subscribeAll": "true"}, headers=auth):
                    async with http.get(self._ari(f"/applications/{app}"), headers=auth) as response:
                        status = response.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self._add("ARI application", False, f"cannot open the ARI event websocket for {app!r} ({type(exc).__name__}: "
                      f"{exc}): load res_ari_events.so and res_http_websocket.so (modules.conf)")
            return
        if status != 200:
            self._add("ARI application", False, f"ARI does not list application {app!r} (HTTP {status}): check "
                      f"[asterisk] ari_app in {self.config_name} and res_ari_applications.so in modules.conf")
        else:
            self._add("ARI application", True, f"{app!r} registers and is listed")

    # -- FastAGI as Asterisk reaches it ---------------------------------------------------------
    async def _fastagi(self) -> None:
        assert self._ami is not None
        host, port = self.ast.fastagi_host, self.ast.fastagi_port
        reached = asyncio.Event()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            reached.set()
            writer.close()

        try:
            server = await asyncio.start_server(answer, host, port)
        except OSError:
            self._add("FastAGI", True, f"{host}:{port} is in use (an stc-server running?): not checked from Asterisk")
            return
        context = f"stc-check-{secrets.token_hex(4)}"
        target = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        try:
            await self._cli(f"dialplan add extension s,1,AGI(agi://{target}:{port}/stc-check) into {context}")
            await self._cli(f"dialplan add extension s,2,Hangup() into {context}")
            await self._ami.action({"Action": "Originate", "Channel": f"Local/s@{context}", "Application": "Wait",
                                    "Data": "1", "Async": "true"})
            try:
                await asyncio.wait_for(reached.wait(), self.timeout)
                self._add("FastAGI", True, f"Asterisk reaches {target}:{port}")
            except asyncio.TimeoutError:
                self._add("FastAGI", False, f"Asterisk did not reach agi://{target}:{port} within {self.timeout:g} s: "
                          f"set [asterisk] fastagi_host in {self.config_name} to an address Asterisk can reach, and open "
                          f"that port to it in the firewall")
        finally:
            await self._cli(f"dialplan remove context {context}")
            server.close()
            await server.wait_closed()

    async def _cli(self, command: str) -> None:
        assert self._ami is not None
        await self._ami.action({"Action": "Command", "Command": command})


async def run_checks(config: ServerConfig, *, config_name: str = "server.toml", timeout: float = 5.0) -> list[CheckResult]:
    if not config.asterisk.nodes:
        return await Checker(config, config_name=config_name, timeout=timeout).run()
    # Several nodes: every check once per node, each seeing that node as the [asterisk] it checks.
    results: list[CheckResult] = []
    for node in config.asterisk.nodes:
        settings = replace(config.asterisk, nodes=(), **{f.name: getattr(node, f.name) for f in fields(AsteriskNode)})
        checker = Checker(replace(config, asterisk=settings), config_name=config_name, timeout=timeout)
        results += [CheckResult(f"{node.name}: {r.name}", r.ok, r.detail) for r in await checker.run()]
    return results

