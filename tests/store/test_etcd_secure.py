"""etcd over TLS with authentication: certificates, credentials, token renewal, start errors.

The StateStore contract runs on the same kind of member in test_contract.py
(backend ``etcd-tls``); this covers what only a secured cluster has. The member
(``etcd_secure_cluster``, tests/store/conftest.py) requires a client certificate,
has authentication on with a ``root`` user, and forgets a simple token after
``SECURE_TOKEN_TTL`` seconds without use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aether.server.config import ConfigError, load_config
from aether.store import EtcdOptions, Event, StateStore, StoreUnavailableError, open_state_store
from aether.store.etcd import EtcdAuthError, EtcdStateStore, etcd_tls_context
from tests.store.conftest import SECURE_PASSWORD, SECURE_TOKEN_TTL, secure_store_options
from tests.support.etcd import EtcdCluster, Pki, make_pki
from tests.support.server import running_server


def _options(cluster: EtcdCluster, **changes: Any) -> EtcdOptions:
    pki = cluster.pki
    assert pki is not None
    fields: dict[str, Any] = {
        "ca_file": str(pki.ca_file),
        "cert_file": str(pki.client_cert_file),
        "key_file": str(pki.client_key_file),
        "username": "root",
        "password": SECURE_PASSWORD,
    }
    fields.update(changes)
    return EtcdOptions(**fields)


@contextlib.asynccontextmanager
async def opened(url: str, options: EtcdOptions) -> AsyncIterator[StateStore]:
    store = await open_state_store(url, etcd=options)
    try:
        yield store
    finally:
        await store.close()


def _settings_env(
    cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch, **changes: str
) -> dict[str, str]:
    """Set the server's ``AETHER_*`` variables for ``cluster`` (``changes``: "" unsets)."""
    pki = cluster.pki
    assert pki is not None
    env = {
        "AETHER_STATE_URL": cluster.url + "/aether",
        "AETHER_ETCD_CA_FILE": str(pki.ca_file),
        "AETHER_ETCD_CERT_FILE": str(pki.client_cert_file),
        "AETHER_ETCD_KEY_FILE": str(pki.client_key_file),
        "AETHER_ETCD_USERNAME": "root",
        "AETHER_ETCD_PASSWORD": SECURE_PASSWORD,
    }
    env.update(changes)
    for name, value in env.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    return {k: v for k, v in env.items() if v}


# -- connecting ------------------------------------------------------------------


async def test_etcds_url_with_settings_reaches_the_cluster(
    etcd_secure_cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert etcd_secure_cluster.url.startswith("etcds://127.0.0.1:")
    settings = load_config(environ=_settings_env(etcd_secure_cluster, monkeypatch))
    assert settings.etcd_options() == _options(etcd_secure_cluster)
    async with opened(settings.resolved_state_url(), settings.etcd_options()) as store:
        assert isinstance(store, EtcdStateStore)
        assert store.endpoints[0].startswith("https://")
        revision = await store.put("secure/k", b"v")
        kv = await store.get("secure/k")
        assert kv is not None and kv.value == b"v" and kv.mod_revision == revision
        await store.delete("", prefix=True)


async def test_credentials_in_the_url(etcd_secure_cluster: EtcdCluster) -> None:
    url = etcd_secure_cluster.url.replace("etcds://", f"etcds://root:{SECURE_PASSWORD}@")
    options = _options(etcd_secure_cluster, username="", password="")
    async with opened(url + "/in-url", options) as store:
        await store.put("k", b"v")
        assert (await store.range(""))[0][0].value == b"v"
        await store.delete("", prefix=True)
    with pytest.raises(ValueError, match="given twice"):
        await open_state_store(url, etcd=_options(etcd_secure_cluster))


async def test_wrong_password_is_a_clear_error(etcd_secure_cluster: EtcdCluster) -> None:
    with pytest.raises(EtcdAuthError) as info:
        await open_state_store(
            etcd_secure_cluster.url, etcd=_options(etcd_secure_cluster, password="wrong")
        )
    message = str(info.value)
    assert "authentication failed for user 'root'" in message
    assert "invalid user ID or password" in message
    assert "wrong" not in message


async def test_missing_credentials_name_the_settings(etcd_secure_cluster: EtcdCluster) -> None:
    with pytest.raises(EtcdAuthError, match="AETHER_ETCD_USERNAME and AETHER_ETCD_PASSWORD"):
        await open_state_store(
            etcd_secure_cluster.url, etcd=_options(etcd_secure_cluster, username="", password="")
        )


async def test_a_user_without_a_role_is_refused_clearly(etcd_secure_cluster: EtcdCluster) -> None:
    await asyncio.to_thread(etcd_secure_cluster.etcdctl, "user", "add", "norole:pw")
    try:
        with pytest.raises(EtcdAuthError, match=r"permission denied.*key prefix"):
            await open_state_store(
                etcd_secure_cluster.url + "/x",
                etcd=_options(etcd_secure_cluster, username="norole", password="pw"),
            )
    finally:
        await asyncio.to_thread(etcd_secure_cluster.etcdctl, "user", "delete", "norole")


async def test_a_user_with_a_prefix_role_is_enough(etcd_secure_cluster: EtcdCluster) -> None:
    """What docs/production.md tells operators to set up: readwrite on the prefix only."""
    ctl = etcd_secure_cluster.etcdctl
    for command in [
        ("role", "add", "scoped"),
        ("role", "grant-permission", "scoped", "--prefix=true", "readwrite", "scoped/"),
        ("user", "add", "scoped:pw"),
        ("user", "grant-role", "scoped", "scoped"),
    ]:
        await asyncio.to_thread(ctl, *command)
    try:
        options = _options(etcd_secure_cluster, username="scoped", password="pw")
        async with opened(etcd_secure_cluster.url + "/scoped", options) as store:
            start = await store.revision() + 1
            lease = await store.lease_grant(5)
            events = store.watch("", start)
            try:
                await store.put("k", b"v", lease=lease)
                async with asyncio.timeout(10):
                    event: Event = await anext(events)
                assert event.kv.key == "k" and event.kv.lease == lease
            finally:
                await events.aclose()  # type: ignore[attr-defined]
            assert await store.lease_keepalive(lease) > 0
            await store.lease_revoke(lease)
            assert await store.get("k") is None
        with pytest.raises(EtcdAuthError, match="permission denied"):
            await open_state_store(etcd_secure_cluster.url + "/elsewhere", etcd=options)
    finally:
        await asyncio.to_thread(ctl, "user", "delete", "scoped")
        await asyncio.to_thread(ctl, "role", "delete", "scoped")


async def test_wrong_ca_is_a_clear_error(etcd_secure_cluster: EtcdCluster, tmp_path: Path) -> None:
    other: Pki = make_pki(tmp_path / "other", name="someone-else")
    with pytest.raises(StoreUnavailableError) as info:
        await open_state_store(
            etcd_secure_cluster.url, etcd=_options(etcd_secure_cluster, ca_file=str(other.ca_file))
        )
    message = str(info.value)
    assert "TLS" in message and "AETHER_ETCD_CA_FILE" in message
    assert "certificate verify failed" in message


async def test_a_missing_client_certificate_is_a_clear_error(
    etcd_secure_cluster: EtcdCluster,
) -> None:
    with pytest.raises(StoreUnavailableError) as info:
        await open_state_store(
            etcd_secure_cluster.url, etcd=_options(etcd_secure_cluster, cert_file="", key_file="")
        )
    assert "AETHER_ETCD_CERT_FILE" in str(info.value)


async def test_plain_http_to_a_tls_member_is_refused(etcd_secure_cluster: EtcdCluster) -> None:
    plain = etcd_secure_cluster.url.replace("etcds://", "etcd://")
    with pytest.raises(ValueError, match="etcds://"):  # TLS files with a plain URL
        await open_state_store(plain, etcd=_options(etcd_secure_cluster))
    with pytest.raises(StoreUnavailableError, match="if they serve TLS, write the URL as etcds"):
        await open_state_store(plain, etcd=EtcdOptions(username="root", password=SECURE_PASSWORD))


# -- bad settings stop the start ----------------------------------------------------


def test_bad_tls_files_stop_the_start(
    etcd_secure_cluster: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = etcd_secure_cluster.pki
    assert pki is not None
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = {
        "no such file": {"AETHER_ETCD_CA_FILE": str(tmp_path / "missing.pem")},
        "holds no usable PEM certificate": {"AETHER_ETCD_CA_FILE": str(garbage)},
        "cannot be used": {"AETHER_ETCD_KEY_FILE": str(pki.server_key_file)},  # not its key
        "needs both files": {"AETHER_ETCD_KEY_FILE": ""},
        "write the state store URL as etcds://": {
            "AETHER_STATE_URL": etcd_secure_cluster.url.replace("etcds", "etcd")
        },
        "go together": {"AETHER_ETCD_PASSWORD": ""},
        "AETHER_STATE_URL": {"AETHER_STATE_URL": "etcds://a:b"},
    }
    for expected, change in cases.items():
        with monkeypatch.context() as env, pytest.raises(ConfigError) as info:
            load_config(environ=_settings_env(etcd_secure_cluster, env, **change))
        assert expected in str(info.value), (expected, str(info.value))
    # the TLS context itself names a bad file the same way
    with pytest.raises(ValueError, match="no such file"):
        etcd_tls_context(str(tmp_path / "missing.pem"))


# -- tokens --------------------------------------------------------------------------


async def test_an_expired_token_is_renewed_for_requests_and_watches(
    etcd_secure_cluster: EtcdCluster,
) -> None:
    options = secure_store_options(etcd_secure_cluster)
    store = await EtcdStateStore.open(etcd_secure_cluster.endpoints, prefix="expiry/", **options)
    writer = await EtcdStateStore.open(etcd_secure_cluster.endpoints, prefix="expiry/", **options)
    try:
        await store.put("a", b"1")
        first = store._token
        assert first
        # A simple token lives SECURE_TOKEN_TTL seconds after its last use (checked
        # each second); using it to check would keep it alive, so just wait.
        await asyncio.sleep(SECURE_TOKEN_TTL + 1.5)
        kv = await store.get("a")  # refused, renewed, retried
        assert kv is not None and kv.value == b"1"
        second = store._token
        assert second and second != first
        assert await _refused(etcd_secure_cluster, first)

        await asyncio.sleep(SECURE_TOKEN_TTL + 1.5)  # the watch connects with a dead token
        start = await writer.revision() + 1
        events = store.watch("", start)
        try:
            await writer.put("b", b"2")
            async with asyncio.timeout(15):
                event: Event = await anext(events)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        assert event.kv.key == "b" and event.kv.value == b"2"
        assert store._token not in (first, second)
        await store.delete("", prefix=True)
    finally:
        await store.close()
        await writer.close()


async def _refused(cluster: EtcdCluster, token: str) -> bool:
    """Whether etcd refuses ``token`` as invalid (asked directly, without the store)."""
    pki = cluster.pki
    assert pki is not None
    tls = etcd_tls_context(str(pki.ca_file), str(pki.client_cert_file), str(pki.client_key_file))
    async with httpx.AsyncClient(verify=tls) as client:
        response = await client.post(
            cluster.endpoints[0] + "/v3/kv/range",
            json={"key": base64.b64encode(b"expiry/a").decode()},
            headers={"Authorization": token},
        )
    return response.status_code == 401 and "invalid auth token" in response.text


# -- the server ---------------------------------------------------------------------------


def test_a_server_runs_on_the_secured_cluster(
    etcd_secure_cluster: EtcdCluster, tmp_path: Path
) -> None:
    pki = etcd_secure_cluster.pki
    assert pki is not None
    with running_server(
        tmp_path,
        state_url=etcd_secure_cluster.url + "/server",
        etcd_ca_file=str(pki.ca_file),
        etcd_cert_file=str(pki.client_cert_file),
        etcd_key_file=str(pki.client_key_file),
        etcd_username="root",
        etcd_password=SECURE_PASSWORD,
    ) as server:
        auth = {"Authorization": f"Bearer {server.admin_token}"}
        assert httpx.get(f"{server.base_url}/api/v1/nodes", headers=auth).status_code == 200
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
        raw = etcd_secure_cluster.etcdctl("get", "--prefix", "--keys-only", "server/")
        assert raw.strip(), "the server wrote nothing under its prefix"
    etcd_secure_cluster.etcdctl("del", "--prefix", "server/")
