"""TLS and mTLS on a real ``processflow serve``, with certificates made at
test time by the openssl command (the cryptography package is not installed)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from tests.support.databases import SqliteDatabases
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, start_server


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(directory: Path, name: str, subject: str, extensions: str) -> None:
    """A key and a certificate for ``name``, signed by the CA in ``directory``."""
    (directory / f"{name}.ext").write_text(extensions + "\n")
    key, request = f"{name}.key", f"{name}.csr"
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
            "-out", request, "-subj", subject, cwd=directory)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


@dataclass(frozen=True)
class Certificates:
    directory: Path

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def credentials(self, client: str | None = None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(self.read("ca.pem"))
        return grpc.ssl_channel_credentials(
            self.read("ca.pem"), self.read(f"{client}.key"), self.read(f"{client}.pem")
        )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("certificates")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=ProcessFlow test CA",
            cwd=directory)  # fmt: skip
    server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    issue(directory, "server", "/CN=localhost", server)
    for client in ("billing", "rogue"):
        issue(directory, client, f"/CN={client}.acme.internal",
              f"subjectAltName=DNS:{client}.acme.internal\n"
              "extendedKeyUsage=clientAuth")  # fmt: skip
    return Certificates(directory)


def secure_health(address: str, credentials: grpc.ChannelCredentials) -> str:
    with grpc.secure_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as error:
            return str(error.code().name)  # type: ignore[attr-defined]
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


@pytest.fixture
def database(sqlite_databases: SqliteDatabases, tmp_path: Path) -> str:
    return sqlite_databases.new(tmp_path)


def serve_tls(
    database: str, directory: Path, certificates: Certificates, *extra: str
) -> ServerProcess:
    server = start_server(
        database,
        directory,
        args=[
            "--tls-cert-file", certificates.path("server.pem"),
            "--tls-key-file", certificates.path("server.key"),
            *extra,
        ],
        wait_serving=False,
    )  # fmt: skip
    wait_for(
        lambda: (
            secure_health(server.address, certificates.credentials("billing"))
            == "SERVING"
        ),
        timeout=30,
        interval=0.1,
        message="TLS health SERVING",
    )
    return server


@pytest.fixture
def tls_server(
    database: str, tmp_path: Path, certificates: Certificates
) -> Iterator[ServerProcess]:
    server = serve_tls(database, tmp_path / "server", certificates)
    yield server
    assert server.terminate() == 0


def test_tls_serves_encrypted_and_refuses_plaintext(
    tls_server: ServerProcess, certificates: Certificates
) -> None:
    with grpc.secure_channel(tls_server.address, certificates.credentials()) as channel:
        stub = pb_grpc.ProcessFlowServiceStub(channel)
        started = stub.StartSession(pb.StartSessionRequest(user_id="u", query="q"))
        assert started.session.session_id
    assert secure_health(tls_server.address, certificates.credentials()) == "SERVING"
    with grpc.insecure_channel(tls_server.address) as channel:
        stub = pb_grpc.ProcessFlowServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListSessions(pb.ListSessionsRequest(), timeout=3)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_mtls_maps_the_client_certificate_to_a_principal(
    database: str, tmp_path: Path, certificates: Certificates
) -> None:
    keys = tmp_path / "keys.jsonl"
    keys.write_text(
        '{"key_id": "billing-cert", "certificate": "billing.acme.internal", '
        '"tenant": "acme", "scopes": ["write", "read"]}\n'
    )
    server = serve_tls(
        database, tmp_path / "server", certificates,
        "--tls-client-ca-file", certificates.path("ca.pem"),
        "--api-keys-file", str(keys),
    )  # fmt: skip
    try:
        address = server.address
        with grpc.secure_channel(address, certificates.credentials("billing")) as ch:
            stub = pb_grpc.ProcessFlowServiceStub(ch)
            stub.StartSession(pb.StartSessionRequest(user_id="u", query="q"))
            assert len(stub.ListSessions(pb.ListSessionsRequest()).sessions) == 1
        with grpc.secure_channel(address, certificates.credentials("rogue")) as ch:
            stub = pb_grpc.ProcessFlowServiceStub(ch)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ListSessions(pb.ListSessionsRequest(), timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        # Without a client certificate the handshake itself fails.
        assert secure_health(address, certificates.credentials()) == "UNAVAILABLE"
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert-file", "{server.pem}"], "--tls-cert-file needs --tls-key-file"),
        (["--tls-key-file", "{server.key}"], "--tls-key-file needs --tls-cert-file"),
        (
            ["--tls-cert-file", "{server.pem}", "--tls-key-file", "{server.key}",
             "--tls-client-ca-file", "{ca.pem}"],
            "--tls-client-ca-file needs --api-keys-file",
        ),
        (
            ["--tls-cert-file", "{ca.key}", "--tls-key-file", "{server.key}"],
            "--tls-cert-file",
        ),
        (
            ["--tls-cert-file", "{missing.pem}", "--tls-key-file", "{server.key}"],
            "--tls-cert-file: cannot read",
        ),
    ],
)  # fmt: skip
def test_bad_tls_options_are_refused_naming_the_flag(
    database: str, tmp_path: Path, certificates: Certificates, flags: list[str],
    message: str,
) -> None:  # fmt: skip
    args = [certificates.path(f[1:-1]) if f.startswith("{") else f for f in flags]
    result = subprocess.run(
        [".venv/bin/processflow", "serve", "--listen", "127.0.0.1:0",
         "--database-url", database, *args],
        capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
