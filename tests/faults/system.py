"""The system under test, as real processes: a throwaway PostgreSQL cluster
(never the machine's shared one), ``processflow serve``, several
``processflow relay`` processes reaching a separate legacy database through a
TCP proxy that can be taken down, and the operator's CLI."""

from __future__ import annotations

import glob
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from outbox_relay import dead_letters
from processflow.db import create_engine, normalize_url, utcnow
from server.auth import hash_key
from tests.support.databases import ThrowawayCluster
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, start_server
from tests.support.tcp_proxy import TcpProxy

PROCESSFLOW = [sys.executable, "-m", "processflow.cli"]
API_KEY = "pfk_fault-suite-writer-key-0123456789"
TENANT = "fault-tenant"
POISON_MODEL = "poison-model"
# Small batches by default, so that kills land between many of them; the
# long run can take the relay's own default (python -m tests.faults).
RELAY_BATCH_SIZE = 50
RELAY_ARGS = [
    "--poll-interval-seconds", "0.2",
    "--retry-initial-seconds", "0.05",
    "--retry-max-seconds", "0.5",
    "--max-attempts", "3",
    "--outage-report-interval-seconds", "5",
    "--shutdown-grace-seconds", "2",
    "--log-level", "WARNING",
]  # fmt: skip


def _bin_dir() -> Path:
    return Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1]).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Counters:
    relay_kills: int = 0
    postgres_restarts: int = 0
    legacy_outages: int = 0
    poison_rounds: int = 0
    dead_letters_replayed: int = 0


@dataclass
class System:
    directory: Path
    cluster: ThrowawayCluster
    main_url: str
    legacy_url: str
    proxy: TcpProxy
    server: ServerProcess | None = None
    relays: list[subprocess.Popen[bytes]] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    relay_starts: int = 0
    relay_batch_size: int = RELAY_BATCH_SIZE

    @classmethod
    def start(
        cls,
        directory: Path,
        relays: int = 3,
        relay_batch_size: int = RELAY_BATCH_SIZE,
    ) -> System:
        directory.mkdir(parents=True, exist_ok=True)
        cluster = ThrowawayCluster.start()
        if cluster is None:
            raise RuntimeError("PostgreSQL server programs (initdb) are not installed")
        admin = create_engine(cluster.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for name in ("pf_main", "pf_legacy"):
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        main_url = make_url(cluster.url).set(database="pf_main")
        legacy = make_url(cluster.url).set(database="pf_legacy")
        proxy = TcpProxy("127.0.0.1", cluster.port)
        system = cls(
            directory,
            cluster,
            main_url.render_as_string(hide_password=False),
            legacy.render_as_string(hide_password=False),
            proxy,
            relay_batch_size=relay_batch_size,
        )
        try:
            system.cli("migrate", "--legacy-database-url", system.legacy_url)
            keys = directory / "keys.jsonl"
            keys.write_text(
                f'{{"key_id": "faults", "sha256": "{hash_key(API_KEY)}", '
                f'"tenant": "{TENANT}", "scopes": ["write", "read"]}}\n'
            )
            system.server = start_server(
                system.main_url,
                directory / "server",
                args=[
                    "--api-keys-file", str(keys),
                    "--log-level", "WARNING",
                    "--database-pool-size", "6",
                    "--shutdown-grace-seconds", "2",
                ],
            )  # fmt: skip
            for _ in range(relays):
                system.relays.append(system._start_relay())
        except BaseException:
            system.stop()
            raise
        return system

    @property
    def legacy_via_proxy(self) -> str:
        url = make_url(self.legacy_url).set(port=self.proxy.port)
        return url.render_as_string(hide_password=False)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*PROCESSFLOW, *args, "--database-url", self.main_url],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"processflow {args}: {result.stderr[-2000:]}")
        return result

    def _start_relay(self) -> subprocess.Popen[bytes]:
        self.relay_starts += 1
        log = open(self.directory / f"relay-{self.relay_starts}.log", "wb")  # noqa: SIM115
        with log:
            return subprocess.Popen(
                [
                    *PROCESSFLOW, "relay",
                    "--database-url", self.main_url,
                    "--legacy-database-url", self.legacy_via_proxy,
                    "--batch-size", str(self.relay_batch_size),
                    *RELAY_ARGS,
                ],
                stdout=log, stderr=subprocess.STDOUT, env=_env(),
            )  # fmt: skip

    def kill_a_relay(self, rng: random.Random) -> None:
        """SIGKILL one relay (mid-batch, whatever it does) and start another."""
        index = rng.randrange(len(self.relays))
        victim = self.relays[index]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        self.counters.relay_kills += 1
        self.relays[index] = self._start_relay()

    def restart_postgres(self, mode: str) -> None:
        """Restarts the throwaway cluster: ``fast`` disconnects everyone,
        ``immediate`` is a crash followed by recovery."""
        bin_dir = _bin_dir()
        data = self.cluster.directory / "data"
        # -l again: without it the new postmaster would keep our pipes open.
        # The server options come back from postmaster.opts.
        subprocess.run(
            [*self.cluster.run_as, str(bin_dir / "pg_ctl"), "-D", str(data),
             "-l", str(self.cluster.directory / "log"),
             "-m", mode, "-w", "-t", "60", "restart"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=120,
        )  # fmt: skip
        self.counters.postgres_restarts += 1

    def legacy_down(self) -> None:
        self.proxy.down()
        self.counters.legacy_outages += 1

    def legacy_up(self) -> None:
        self.proxy.up()

    def _legacy_admin(self) -> sa.Engine:
        return create_engine(self.legacy_url, isolation_level="AUTOCOMMIT")

    def poison_on(self) -> None:
        """The legacy side starts refusing LLM calls of the poison model (NOT
        VALID: rows of earlier rounds, replayed once fixed, stay)."""
        engine = self._legacy_admin()
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SET lock_timeout = '20s'")
                connection.exec_driver_sql(
                    'ALTER TABLE "LLMUsageLogs" ADD CONSTRAINT fault_poison '
                    f"CHECK (\"ModelId\" <> '{POISON_MODEL}') NOT VALID"
                )
        finally:
            engine.dispose()
        self.counters.poison_rounds += 1

    def poison_off(self) -> None:
        engine = self._legacy_admin()
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SET lock_timeout = '20s'")
                connection.exec_driver_sql(
                    'ALTER TABLE "LLMUsageLogs" DROP CONSTRAINT IF EXISTS fault_poison'
                )
        finally:
            engine.dispose()

    def replay_dead_letters(self) -> int:
        """Replays every parked event: the first through the operator's CLI,
        the rest through the same function in this process (a process start
        per event would stall the fault schedule)."""
        engine = create_engine(self.main_url)
        try:
            with engine.connect() as connection:
                ids = list(
                    connection.execute(
                        sa.text(
                            "SELECT id FROM process_flow_outbox WHERE status = 'dead' "
                            "ORDER BY session_id, sequence"
                        )
                    ).scalars()
                )
            if ids:
                self.cli("dead-letters", "replay", str(ids[0]))
            for event_id in ids[1:]:
                with engine.begin() as connection:
                    dead_letters.replay_dead_event(connection, str(event_id), utcnow())
        finally:
            engine.dispose()
        self.counters.dead_letters_replayed += len(ids)
        return len(ids)

    def unsettled(self) -> tuple[int, int]:
        """(pending, dead) events in the outbox."""
        engine = create_engine(self.main_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.text(
                        "SELECT status, count(*) FROM process_flow_outbox "
                        "WHERE status IN ('pending', 'dead') GROUP BY status"
                    )
                )
                counts = {str(s): int(n) for s, n in rows}
        finally:
            engine.dispose()
        return counts.get("pending", 0), counts.get("dead", 0)

    def wait_server_serving(self, timeout: float = 60.0) -> None:
        assert self.server is not None
        self.server.wait_serving(timeout)

    def relays_alive(self) -> bool:
        return all(relay.poll() is None for relay in self.relays)

    def stop(self) -> None:
        for relay in self.relays:
            if relay.poll() is None:
                relay.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for relay in self.relays:
            try:
                relay.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait(5)
        if self.server is not None:
            try:
                self.server.terminate(20)
            except subprocess.TimeoutExpired:
                self.server.kill()
        self.proxy.close()
        self.cluster.stop()


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(normalize_url(url))


def wait_until_settled(system: System, timeout: float) -> float:
    """Waits until no event is pending or parked (replaying parked ones);
    returns the seconds it took."""
    began = time.monotonic()

    def settled() -> bool:
        pending, dead = system.unsettled()
        if dead:
            system.replay_dead_letters()
        return pending == 0 and dead == 0

    wait_for(settled, timeout=timeout, interval=0.5, message="outbox settled")
    return time.monotonic() - began
