"""The keys file, key matching, reloading and the method-to-scope table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from processflow.v1 import processflow_service_pb2 as pb
from server.auth import (
    ADMIN,
    METHOD_SCOPES,
    READ,
    WRITE,
    KeysFileError,
    KeyStore,
    Principal,
    analytics_tenant,
    bearer_token,
    hash_key,
    parse_keys,
)

SECRET = "pfk_unit-test-secret-value"


def key_line(
    key_id: str, secret: str, tenant: str = "acme", scopes: str = '"read"'
) -> str:
    return (
        f'{{"key_id": "{key_id}", "sha256": "{hash_key(secret)}", '
        f'"tenant": "{tenant}", "scopes": [{scopes}]}}'
    )


def test_every_rpc_of_the_service_needs_a_known_scope() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["ProcessFlowService"].methods_by_name)
    assert set(METHOD_SCOPES) == methods
    assert set(METHOD_SCOPES.values()) == {READ, WRITE}


def test_mutations_need_write_and_reads_need_read() -> None:
    for name, method in pb.DESCRIPTOR.services_by_name[
        "ProcessFlowService"
    ].methods_by_name.items():
        reads = name.startswith(("Get", "List", "Watch", "Wait"))
        assert METHOD_SCOPES[name] == (READ if reads else WRITE), method.full_name


def test_keys_file_parses_keys_certificates_comments_and_blank_lines() -> None:
    text = "\n".join(
        [
            "# operators' note",
            key_line("svc-a", SECRET, scopes='"write", "read"'),
            "",
            '{"key_id": "cert-b", "certificate": "b.internal", "tenant": "b",'
            ' "scopes": ["admin", "read"]}',
        ]
    )
    first, second = parse_keys(text)
    assert first.principal == Principal("svc-a", "acme", frozenset({WRITE, READ}))
    assert first.sha256 == hash_key(SECRET)
    assert second.certificate == "b.internal"
    assert second.principal.scopes == {ADMIN, READ}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "line 1: not a JSON object"),
        ("[1]", "line 1: not a JSON object"),
        (
            '{"key_id": "a b", "sha256": "' + "0" * 64 + '", "tenant": "t",'
            ' "scopes": ["read"]}',
            "key_id",
        ),
        (
            '{"key_id": "a", "sha256": "' + "0" * 64 + '", "tenant": "",'
            ' "scopes": ["read"]}',
            "tenant",
        ),
        (
            '{"key_id": "a", "sha256": "' + "0" * 64 + '", "tenant": "t",'
            ' "scopes": ["root"]}',
            "scopes",
        ),
        (
            '{"key_id": "a", "sha256": "' + "0" * 64 + '", "tenant": "t",'
            ' "scopes": []}',
            "scopes",
        ),
        (
            '{"key_id": "a", "sha256": "XYZ", "tenant": "t", "scopes": ["read"]}',
            "sha256",
        ),
        ('{"key_id": "a", "tenant": "t", "scopes": ["read"]}', "exactly one"),
        (
            '{"key_id": "a", "sha256": "' + "0" * 64 + '", "certificate": "c",'
            ' "tenant": "t", "scopes": ["read"]}',
            "exactly one",
        ),
        (
            '{"key_id": "a", "secret": "x", "tenant": "t", "scopes": ["read"]}',
            "unknown field 'secret'",
        ),
    ],
)
def test_a_bad_line_is_refused_naming_line_and_field(line: str, reason: str) -> None:
    with pytest.raises(KeysFileError, match=reason):
        parse_keys(line)


def test_a_key_id_may_appear_once() -> None:
    with pytest.raises(KeysFileError, match="line 2: key_id 'a' appears twice"):
        parse_keys(key_line("a", "one") + "\n" + key_line("a", "two"))


def test_errors_never_quote_the_line(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError) as raised:
        parse_keys('{"key_id": "a", "sha256": "' + SECRET + '"}')
    assert SECRET not in str(raised.value)


def test_keys_match_only_by_their_exact_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text(key_line("a", SECRET) + "\n" + key_line("b", SECRET + "x") + "\n")
    store = KeyStore(path)
    found = store.principal_for_key(SECRET)
    assert found is not None and found.key_id == "a"
    assert store.principal_for_key(SECRET[:-1]) is None
    assert store.principal_for_key("") is None
    assert store.principal_for_certificate(["anything"]) is None


def test_the_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "keys.jsonl"
    path.write_text(key_line("a", "first") + "\n")
    store = KeyStore(path, reload_interval_seconds=1.0, clock=lambda: now[0])
    path.write_text(key_line("b", "second") + "\n")
    os.utime(path, ns=(1, 1))
    store.reload_if_changed()
    assert store.principal_for_key("second") is None  # not due yet
    now[0] = 1.5
    store.reload_if_changed()
    assert store.principal_for_key("second") is not None
    assert store.principal_for_key("first") is None


def test_a_broken_file_keeps_the_previous_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text(key_line("a", SECRET) + "\n")
    store = KeyStore(path)
    path.write_text(key_line("a", SECRET) + "\n{broken " + SECRET + "\n")
    assert store.reload() is False
    assert store.principal_for_key(SECRET) is not None
    assert [r.event for r in caplog.records if r.levelname == "ERROR"] == [  # type: ignore[attr-defined]
        "api_keys_rejected"
    ]
    assert SECRET not in caplog.text
    path.unlink()
    assert store.reload() is False
    assert store.principal_for_key(SECRET) is not None


def test_an_unreadable_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="cannot read"):
        KeyStore(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), None),
        ((("x-other", "1"),), None),
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("authorization", "Basic abc"),), ""),
        ((("authorization", "Bearer"),), ""),
        ((("authorization", "Bearer "),), ""),
    ],
)
def test_bearer_token(
    metadata: tuple[tuple[str, str], ...], expected: str | None
) -> None:
    assert bearer_token(metadata) == expected


def test_analytics_tenant() -> None:
    principal = Principal("k", "acme", frozenset({READ}))
    assert analytics_tenant(principal, pb.GetUsageSummaryRequest()) == "acme"
    own = pb.GetUsageSummaryRequest(tenant_id="acme")
    assert analytics_tenant(principal, own) == "acme"
    other = pb.GetSuccessSummaryRequest(tenant_id="other")
    assert analytics_tenant(principal, other) == "other"
    every = pb.GetStepPerformanceRequest(tenant_id="*")
    assert analytics_tenant(principal, every) is None
