"""Authentication and authorization: API keys and client certificates mapped
to principals, checked by one wrapper around every ProcessFlowService method.

The keys file holds one JSON object per line (blank lines and lines starting
with ``#`` are ignored):

    {"key_id": "billing", "sha256": "<hex sha256 of the key>",
     "tenant": "acme", "scopes": ["write", "read"]}
    {"key_id": "billing-cert", "certificate": "billing.acme.internal",
     "tenant": "acme", "scopes": ["write"]}

An entry names either the sha256 of a bearer key (``processflow keys create``
writes these) or a client certificate identity (its subject CN or one of its
SANs, for mTLS). Keys are compared by their hash, in constant time, against
every entry, so neither the key nor how much of it matched shows in timing.

The file is re-read when its modification time or size changes (checked at
most every ``reload_interval_seconds``, on the call path) and on SIGHUP. A file
that does not parse is refused at start; on reload it is logged and the keys
loaded before stay in force.

Method scopes: mutations need ``write``, reads ``read``; an analytics call
about another tenant (``tenant_id`` set to it, or ``*`` for every tenant)
needs ``admin`` as well. Health and reflection are not ProcessFlowService
methods and stay open.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from processflow.v1 import processflow_service_pb2 as pb
from server.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

WRITE, READ, ADMIN = "write", "read", "admin"
SCOPES = (WRITE, READ, ADMIN)
ALL_TENANTS = "*"
ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
UNAUTHENTICATED_MESSAGE = "a valid API key or client certificate is required"
# The certificate fields grpc reports, in the order they are matched.
CERTIFICATE_PROPERTIES = ("x509_common_name", "x509_subject_alternative_name")

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

METHOD_SCOPES: dict[str, str] = {
    "StartSession": WRITE,
    "RecordStep": WRITE,
    "AppendLogs": WRITE,
    "RecordLlmCall": WRITE,
    "CompleteSession": WRITE,
    "Ingest": WRITE,
    "GetSession": READ,
    "ListSessions": READ,
    "WatchSession": READ,
    "WaitForCoverage": READ,
    "GetUsageSummary": READ,
    "GetSuccessSummary": READ,
    "GetStepPerformance": READ,
}
ANALYTICS_REQUESTS = (
    pb.GetUsageSummaryRequest,
    pb.GetSuccessSummaryRequest,
    pb.GetStepPerformanceRequest,
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key (or certificate entry) id, tenant and scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[str]


# Without a keys file every caller is this principal, in the tenant that
# sessions written before authentication carry.
ANONYMOUS = Principal("anonymous", "", frozenset(SCOPES))
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "processflow_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The principal of the call being handled (set by AuthWrapper)."""
    return _current.get()


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the line and field."""


@dataclass(frozen=True)
class KeyEntry:
    principal: Principal
    sha256: str | None
    certificate: str | None


def parse_entry(where: str, text: str) -> KeyEntry:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise KeysFileError(f"{where}: not a JSON object") from None
    if not isinstance(data, dict):
        raise KeysFileError(f"{where}: not a JSON object")
    unknown = set(data) - {"key_id", "sha256", "certificate", "tenant", "scopes"}
    if unknown:
        raise KeysFileError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    key_id, tenant = data.get("key_id"), data.get("tenant")
    if not isinstance(key_id, str) or not ID_PATTERN.fullmatch(key_id):
        raise KeysFileError(f"{where}: key_id must be 1 to 128 of A-Z a-z 0-9 . _ : -")
    if not isinstance(tenant, str) or not ID_PATTERN.fullmatch(tenant):
        raise KeysFileError(f"{where}: tenant must be 1 to 128 of A-Z a-z 0-9 . _ : -")
    scopes = data.get("scopes")
    if (
        not isinstance(scopes, list)
        or not scopes
        or any(scope not in SCOPES for scope in scopes)
    ):
        raise KeysFileError(f"{where}: scopes must be a non-empty list of {SCOPES}")
    sha256, certificate = data.get("sha256"), data.get("certificate")
    if (sha256 is None) == (certificate is None):
        raise KeysFileError(f"{where}: give exactly one of sha256 and certificate")
    if sha256 is not None and (
        not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256)
    ):
        raise KeysFileError(f"{where}: sha256 must be 64 lowercase hex digits")
    if certificate is not None and (
        not isinstance(certificate, str) or not 0 < len(certificate) <= 256
    ):
        raise KeysFileError(f"{where}: certificate must be 1 to 256 characters")
    return KeyEntry(Principal(key_id, tenant, frozenset(scopes)), sha256, certificate)


def parse_keys(text: str) -> list[KeyEntry]:
    entries: list[KeyEntry] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        entry = parse_entry(f"line {number}", stripped)
        if entry.principal.key_id in seen:
            raise KeysFileError(
                f"line {number}: key_id {entry.principal.key_id!r} appears twice"
            )
        seen.add(entry.principal.key_id)
        entries.append(entry)
    return entries


def _file_signature(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class KeyStore:
    """The keys file, loaded, and re-read when it changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        reload_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.reload_interval_seconds = reload_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        try:
            signature = _file_signature(self.path)
            self._entries = parse_keys(self.path.read_text(encoding="utf-8"))
        except OSError as error:
            raise KeysFileError(f"cannot read: {error.strerror}") from None
        self._signature = signature
        self._checked_at = clock()
        log.info(
            "api keys loaded",
            extra={"event": "api_keys_loaded", "keys": len(self._entries)},
        )

    @property
    def entries(self) -> list[KeyEntry]:
        return self._entries

    def reload(self) -> bool:
        """Re-reads the file; keeps the loaded keys when it is unusable.
        True when the new file is in force."""
        with self._lock:
            self._checked_at = self._clock()
            try:
                signature = _file_signature(self.path)
                entries = parse_keys(self.path.read_text(encoding="utf-8"))
            except (OSError, KeysFileError) as error:
                reason = error.strerror if isinstance(error, OSError) else str(error)
                log.error(
                    "api keys file rejected; the previous keys stay in force: %s",
                    reason,
                    extra={"event": "api_keys_rejected", "path": str(self.path)},
                )
                return False
            self._entries, self._signature = entries, signature
        log.info(
            "api keys reloaded",
            extra={"event": "api_keys_reloaded", "keys": len(entries)},
        )
        return True

    def reload_if_changed(self) -> None:
        if self._clock() - self._checked_at < self.reload_interval_seconds:
            return
        try:
            changed = _file_signature(self.path) != self._signature
        except OSError:
            changed = True
        if changed:
            self.reload()
        else:
            self._checked_at = self._clock()

    def principal_for_key(self, secret: str) -> Principal | None:
        presented = hash_key(secret).encode("ascii")
        found: Principal | None = None
        # Every entry is compared, so the time taken does not say which matched.
        for entry in self._entries:
            if entry.sha256 is not None and hmac.compare_digest(
                presented, entry.sha256.encode("ascii")
            ):
                found = entry.principal
        return found

    def principal_for_certificate(self, identities: Iterable[str]) -> Principal | None:
        names = set(identities)
        for entry in self._entries:
            if entry.certificate is not None and entry.certificate in names:
                return entry.principal
        return None


def bearer_token(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The key of an ``authorization: Bearer <key>`` header; "" when the header
    is there but malformed, None when there is none."""
    for name, value in metadata:
        if name != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return ""
        return token.strip()
    return None


def certificate_identities(context: Context) -> list[str]:
    auth = context.auth_context() or {}
    names: list[str] = []
    for prop in CERTIFICATE_PROPERTIES:
        for value in auth.get(prop, ()):
            names.append(value.decode("utf-8", "replace"))
    return names


def analytics_tenant(principal: Principal, request: Any) -> str | None:
    """The tenant an analytics call reports on; None means every tenant."""
    asked = getattr(request, "tenant_id", "")
    if not asked or asked == principal.tenant:
        return principal.tenant
    return None if asked == ALL_TENANTS else str(asked)


class Authenticator:
    """Finds the principal of a call and checks it may make the call."""

    def __init__(self, keys: KeyStore | None) -> None:
        self.keys = keys

    def authenticate(self, context: Context) -> Principal:
        if self.keys is None:
            return ANONYMOUS
        self.keys.reload_if_changed()
        token = bearer_token(context.invocation_metadata() or ())
        if token is not None:
            principal = self.keys.principal_for_key(token) if token else None
        else:
            principal = self.keys.principal_for_certificate(
                certificate_identities(context)
            )
        if principal is None:
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        return principal

    def authorize(self, principal: Principal, method: str, request: Any) -> None:
        scope = METHOD_SCOPES[method]
        if scope not in principal.scopes:
            raise PermissionDenied(
                f"key {principal.key_id!r} lacks the {scope!r} scope that "
                f"{method} needs"
            )
        if (
            isinstance(request, ANALYTICS_REQUESTS)
            and analytics_tenant(principal, request) != principal.tenant
            and ADMIN not in principal.scopes
        ):
            raise PermissionDenied(
                f"key {principal.key_id!r} lacks the 'admin' scope that reporting "
                "on another tenant needs"
            )

    def admit(self, method: str, request: Any, context: Context) -> None:
        principal = self.authenticate(context)
        self.authorize(principal, method, request)
        _current.set(principal)


class AuthWrapper:
    """Admits each ProcessFlowService call or refuses it before the servicer
    runs. Applied inside the boundary (server/interceptors.py), whose table
    turns the refusals into UNAUTHENTICATED and PERMISSION_DENIED."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def wrap_unary(
        self, method: str, behaviour: Callable[[Any, Context], Any]
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        admit = self.authenticator.admit

        async def handle(request: Any, context: Context) -> Any:
            admit(method, request, context)
            response = behaviour(request, context)
            if asyncio.iscoroutine(response):
                response = await response
            return response

        return handle

    def wrap_stream(
        self, method: str, behaviour: Callable[[Any, Context], AsyncIterator[Any]]
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        admit = self.authenticator.admit

        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            admit(method, request, context)
            async for message in behaviour(request, context):
                yield message

        return handle
