"""Authentication on the real commands: ``processflow keys`` makes a key a
running ``serve`` accepts after SIGHUP, keys never reach the logs, and
``dev`` refuses to listen beyond loopback without keys."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from tests.support.databases import SqliteDatabases
from tests.support.polling import wait_for
from tests.support.server import processflow_command, start_server

ROOT = Path(__file__).resolve().parents[2]


def keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*processflow_command(), "keys", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def create_key(path: Path, tenant: str, scopes: str) -> str:
    created = keys("create", "--tenant", tenant, "--scopes", scopes,
                   "--api-keys-file", str(path))  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("pfk_") and secret not in path.read_text()
    return secret


def code_of(address: str, secret: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ProcessFlowServiceStub(channel)
        try:
            stub.ListSessions(
                pb.ListSessionsRequest(),
                metadata=(("authorization", f"Bearer {secret}"),),
                timeout=10,
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def test_a_new_key_works_after_sighup_and_never_reaches_the_logs(
    sqlite_databases: SqliteDatabases, tmp_path: Path
) -> None:
    path = tmp_path / "keys.jsonl"
    first = create_key(path, "acme", "read")
    server = start_server(
        sqlite_databases.new(tmp_path), tmp_path / "server",
        args=["--api-keys-file", str(path), "--api-keys-reload-seconds", "3600",
              "--log-level", "DEBUG"],
    )  # fmt: skip
    try:
        assert code_of(server.address, first) == grpc.StatusCode.OK
        second = create_key(path, "acme", "write,read")
        # The poll interval is an hour: only SIGHUP can bring the key in.
        assert code_of(server.address, second) == grpc.StatusCode.UNAUTHENTICATED
        server.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: code_of(server.address, second) == grpc.StatusCode.OK,
            timeout=15,
            message="the new key accepted",
        )
        assert code_of(server.address, first + "x") == grpc.StatusCode.UNAUTHENTICATED
        listed = keys("list", "--api-keys-file", str(path))
        assert listed.returncode == 0 and "tenant=acme" in listed.stdout
    finally:
        assert server.terminate() == 0
    logs = server.stderr + server.stdout
    assert "api_keys_reloaded" in logs and "rpc_finished" in logs
    for secret in (first, second):
        assert secret[4:] not in logs


def test_an_unusable_keys_file_stops_serve_naming_the_line(
    sqlite_databases: SqliteDatabases, tmp_path: Path
) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text('{"key_id": "a", "tenant": "t", "scopes": ["read"]}\n')
    result = subprocess.run(
        [*processflow_command(), "serve", "--listen", "127.0.0.1:0",
         "--database-url", sqlite_databases.new(tmp_path),
         "--api-keys-file", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--api-keys-file: line 1: give exactly one of sha256" in result.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
def test_dev_without_keys_refuses_a_non_loopback_address(
    tmp_path: Path, listen: str
) -> None:
    result = subprocess.run(
        [*processflow_command(), "dev", "--listen", listen,
         "--database-url", f"sqlite:///{tmp_path / 'dev.db'}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr
    assert not (tmp_path / "dev.db").exists()


def test_dev_on_loopback_warns_loudly_that_auth_is_off(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*processflow_command(), "dev", "--listen", "127.0.0.1:0",
         "--database-url", f"sqlite:///{tmp_path / 'dev.db'}",
         "--shutdown-grace-seconds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("WARNING: authentication is OFF")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
