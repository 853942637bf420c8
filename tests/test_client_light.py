"""The client's light says why it is red: each way a tunnel fails, against a real stc-server."""

from __future__ import annotations

import pytest

from stack import client_config, stc_stack, wait_until
from stc_client.app import ClientApp
from tests.certs import TestPki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(
    ("user", "expect_server_name", "reason_code", "label"),
    [
        ("revoked", "localhost", "refused-by-server", "refused certificate"),
        ("expired", "localhost", "refused-by-server", "refused certificate"),
        ("alice", "pbx.example", "server-certificate-rejected", "server certificate wrong"),
    ],
)
async def test_red_light_names_the_reason(pki: TestPki, user: str, expect_server_name: str, reason_code: str, label: str) -> None:
    async with stc_stack(pki) as stack:
        config = client_config(pki, user, stack.server_port)
        config.server.name = expect_server_name
        client = ClientApp(config)
        await client.start()
        try:
            await wait_until(lambda: client.state.snapshot()["reason_code"] == reason_code, 10, reason_code)
            snap = client.state.snapshot()
            assert snap["light"] == "red" and snap["reason_label"] == label
            assert client.tunnel is None
        finally:
            await client.close()
