"""Descriptors and memory of a TunnelServer while TCP connections that never start TLS pour in.

    .venv/bin/python bench/handshake_flood.py [COUNT] [--sources N]

COUNT connections (default 2000) from N loopback addresses (127.0.0.3 on, default 8) stay
half-open for 2 s, then close. Printed: the server's extra descriptors during the flood, its
refusals by reason, and its resident memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.certs makes the throwaway PKI

from stc_asterisk.config import TunnelSettings
from stc_asterisk.tunnel_server import TunnelServer
from tests.certs import make_test_pki


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def main(count: int, sources: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    pki = make_test_pki(Path(tempfile.mkdtemp(prefix="stc-flood-")))
    server = TunnelServer(TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
                                         ca_bundle=pki.ca, crl=pki.crl))
    await server.start()
    await asyncio.sleep(0.2)
    gc.collect()
    fds_before, rss_before = open_fds(), rss_kib()
    clients = []
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((f"127.0.0.{3 + i % sources}", 0))
        sock.connect_ex(("127.0.0.1", server.port))
        clients.append(sock)
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    server_fds = open_fds() - len(clients) - fds_before
    for sock in clients:
        sock.close()
    await asyncio.sleep(1)
    gc.collect()
    print(f"{count} half-open connections from {sources} addresses: server descriptors +{server_fds} during the flood; "
          f"refused {dict(server.refused)}; RSS {rss_before} KiB before, {rss_kib()} KiB after")
    await server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", nargs="?", type=int, default=2000)
    parser.add_argument("--sources", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.sources))
