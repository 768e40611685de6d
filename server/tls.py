"""TLS and mTLS credentials of the server, read from PEM files.

With --tls-client-ca-file, clients must present a certificate that CA
signed; the certificate's subject CN or one of its SANs then names the
principal through a ``certificate`` entry of the keys file (server/auth.py).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from server.settings import ServerSettings

PEM_MARK = b"-----BEGIN "


def _read_pem(flag: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{flag}: cannot read {path}: {error.strerror}") from None
    if PEM_MARK not in data:
        raise ValueError(f"{flag}: {path} is not a PEM file")
    return data


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """The credentials to listen with; None for plaintext. ValueError naming
    the flag when the options do not fit together or a file is unusable."""
    if not settings.tls_cert_file:
        if settings.tls_key_file:
            raise ValueError("--tls-key-file needs --tls-cert-file")
        if settings.tls_client_ca_file:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file")
        return None
    if not settings.tls_key_file:
        raise ValueError("--tls-cert-file needs --tls-key-file")
    chain = _read_pem("--tls-cert-file", settings.tls_cert_file)
    key = _read_pem("--tls-key-file", settings.tls_key_file)
    client_ca = (
        _read_pem("--tls-client-ca-file", settings.tls_client_ca_file)
        if settings.tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
