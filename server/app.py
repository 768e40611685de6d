"""Server assembly: the grpc.aio server, the store on its thread pool, health,
reflection, the change feed, and shutdown in phases.

Shutdown, on SIGTERM or SIGINT: report NOT_SERVING and end open watches;
stop accepting calls and let in-flight ones finish within
shutdown_grace_seconds; then stop the listener and the database threads and
close the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from processflow.db import create_engine, is_sqlite
from processflow.metrics import MetricsServer, start_metrics_server
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import processflow_service_pb2_grpc as pb_grpc
from server.auth import Authenticator, AuthWrapper, KeysFileError, KeyStore
from server.interceptors import Boundary, add_wrapped_service
from server.servicer import ProcessFlowServicer
from server.settings import ServerSettings
from server.store import Store
from server.store.changes import ChangeFeed, PostgresListener
from server.tls import server_credentials
from server.validation import Limits

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ProcessFlowService"].full_name
HEALTH_CHECK_INTERVAL_SECONDS = 2.0
# Watchers re-read at least this often; on PostgreSQL notifications usually
# wake them sooner, on SQLite only in-process commits do.
SQLITE_POLL_SECONDS = 0.2
POSTGRES_POLL_SECONDS = 1.0


def limits_of(settings: ServerSettings) -> Limits:
    return Limits(
        max_text_chars=settings.max_text_chars,
        max_logs_per_call=settings.max_logs_per_call,
        max_ingest_operations=settings.max_ingest_operations,
        max_steps_per_session=settings.max_steps_per_session,
    )


def load_key_store(settings: ServerSettings) -> KeyStore | None:
    """The keys file, loaded; ValueError naming the flag when it is unusable."""
    if settings.tls_client_ca_file and not settings.api_keys_file:
        raise ValueError(
            "--tls-client-ca-file needs --api-keys-file, which maps client "
            "certificate identities to principals"
        )
    if not settings.api_keys_file:
        return None
    try:
        return KeyStore(
            settings.api_keys_file,
            reload_interval_seconds=settings.api_keys_reload_seconds,
        )
    except KeysFileError as error:
        raise ValueError(f"--api-keys-file: {error}") from None


class Application:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.keys = load_key_store(settings)
        # No pre-ping: the store runs a write again when its pooled
        # connection turns out dead (server/store/transaction.py).
        engine = create_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            pre_ping=False,
        )
        self.store = Store(engine, limits_of(settings))
        self.feed = ChangeFeed()
        self.store.add_commit_listener(self.feed.notify)
        self.listener = (
            None
            if is_sqlite(settings.database_url)
            else PostgresListener(settings.database_url, self.feed)
        )
        self.executor = ThreadPoolExecutor(
            max_workers=settings.database_threads, thread_name_prefix="processflow-db"
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        )
        self.servicer = ProcessFlowServicer(
            self.store,
            self.executor,
            self.feed,
            poll_interval_seconds=SQLITE_POLL_SECONDS
            if self.listener is None
            else POSTGRES_POLL_SECONDS,
        )
        self._health_task: asyncio.Task[None] | None = None
        self._serving: bool | None = None
        self.port = 0
        self.metrics: MetricsServer | None = None

    async def start(self) -> int:
        """Starts listening; returns the bound port."""
        add_wrapped_service(
            self.server,
            pb_grpc.add_ProcessFlowServiceServicer_to_server,
            self.servicer,
            # The boundary is outermost so that it maps the auth refusals too.
            [Boundary(), AuthWrapper(Authenticator(self.keys))],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._add_port()
        if self.settings.metrics_listen:
            try:
                self.metrics = start_metrics_server(
                    self.settings.metrics_listen, self.store.engine
                )
            except ValueError as error:
                raise RuntimeError(str(error)) from error
        await self.server.start()
        if self.listener is not None:
            self.listener.start()
        self._health_task = asyncio.create_task(self._check_health_forever())
        log.info(
            "server started",
            extra={"event": "server_started", "listen": self.address},
        )
        return self.port

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    def _add_port(self) -> int:
        credentials = server_credentials(self.settings)
        if credentials is None:
            return self.server.add_insecure_port(self.settings.listen)
        try:
            return self.server.add_secure_port(self.settings.listen, credentials)
        except RuntimeError as error:
            raise ValueError(
                f"--tls-cert-file/--tls-key-file: cannot listen with TLS: {error}"
            ) from None

    async def check_health(self) -> None:
        loop = asyncio.get_running_loop()
        problem = await loop.run_in_executor(
            self.executor, self.store.readiness_problem
        )
        serving = problem is None
        if serving == self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
        if serving:
            log.info("database ready", extra={"event": "health_serving"})
        else:
            log.warning(
                "database not ready: %s",
                problem,
                extra={"event": "health_not_serving", "reason": problem},
            )

    async def _check_health_forever(self) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:
                log.exception("health check failed", extra={"event": "health_failed"})
            await asyncio.sleep(HEALTH_CHECK_INTERVAL_SECONDS)

    async def wait_for_signal(self) -> signal.Signals:
        """Waits for SIGTERM or SIGINT; returns which one came."""
        loop = asyncio.get_running_loop()
        received: asyncio.Future[signal.Signals] = loop.create_future()

        def on_signal(sig: signal.Signals) -> None:
            if not received.done():
                received.set_result(sig)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        if self.keys is not None:
            loop.add_signal_handler(signal.SIGHUP, self.keys.reload)
        try:
            return await received
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def drain(self) -> None:
        """Phases one and two: stop intake, let in-flight calls finish."""
        log.info(
            "shutting down",
            extra={
                "event": "server_draining",
                "grace_seconds": self.settings.shutdown_grace_seconds,
            },
        )
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.health.enter_graceful_shutdown()
        self.feed.close()
        await self.server.stop(self.settings.shutdown_grace_seconds)

    def close(self) -> None:
        """Phase three: release the listener, the threads and the engine."""
        if self.listener is not None:
            self.listener.stop()
        self.executor.shutdown(wait=True)
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()
        log.info("server stopped", extra={"event": "server_stopped"})

    async def run_until_signal(self) -> None:
        await self.wait_for_signal()
        await self.drain()
        self.close()
