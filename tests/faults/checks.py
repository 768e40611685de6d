"""After the faults: is every acknowledged write in both views exactly once,
and was each session's ledger written in order (PostgreSQL transaction ids)?

Own tables are compared with what the clients were told; the legacy tables
with the own tables through ``verify`` (outbox_relay/verify.py), plus direct
counts of duplicate legacy rows and of ledger rows per session.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from outbox_relay import derive
from outbox_relay import legacy_schema as ls
from outbox_relay.verify import verify
from processflow.db import create_engine
from server import schema
from tests.faults.load import Load
from tests.faults.system import TENANT, System


@dataclass
class Findings:
    sessions: int = 0
    events: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unsettled: int = 0
    unknown_applied: int = 0
    unknown_absent: int = 0
    verify_gaps: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def _grouped(connection: sa.Connection, statement: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = defaultdict(list)
    for row in connection.execute(statement):
        found[row[0]].append(row[1])
    return found


def check_own_tables(main: sa.Engine, load: Load, findings: Findings) -> None:
    S, ST, C, L = schema.sessions, schema.steps, schema.llm_calls, schema.logs
    with main.connect() as connection:
        stored = {
            row.session_id: row
            for row in connection.execute(
                sa.select(S.c.session_id, S.c.status, S.c.event_sequence).where(
                    S.c.tenant_id == TENANT
                )
            )
        }
        steps = _grouped(connection, sa.select(ST.c.session_id, ST.c.step_id))
        calls = _grouped(connection, sa.select(C.c.session_id, C.c.call_id))
        logs = _grouped(connection, sa.select(L.c.session_id, L.c.id))
    unknown_by_session: dict[str, set[str]] = defaultdict(set)
    for session_id, method, _ in load.unknown_writes:
        unknown_by_session[session_id].add(method)
    for record in load.sessions.values():
        unknown = unknown_by_session.get(record.session_id, set())
        row = stored.get(record.session_id)
        if row is None:
            if record.writes:
                findings.lost += record.writes
                findings.problem(f"{record.session_id}: session missing")
            continue
        missing = (record.steps - set(steps[record.session_id])) | (
            record.calls - set(calls[record.session_id])
        )
        findings.lost += len(missing)
        if missing:
            findings.problem(f"{record.session_id}: missing {sorted(missing)}")
        if len(steps[record.session_id]) != len(set(steps[record.session_id])):
            findings.duplicates += 1
        count = len(logs[record.session_id])
        if count < record.logs:
            findings.lost += 1
            findings.problem(f"{record.session_id}: {count} of {record.logs} logs")
        elif count > record.logs + (2 if "AppendLogs" in unknown else 0):
            findings.duplicates += 1
            findings.problem(f"{record.session_id}: {count} logs, {record.logs} sent")
        if record.completed and row.status != "completed":
            findings.lost += 1
            findings.problem(f"{record.session_id}: not completed")
    for session_id, method, _ in load.unknown_writes:
        row = stored.get(session_id)
        record = load.sessions[session_id]
        applied = (
            row is not None
            and {
                "StartSession": True,
                "RecordStep": len(steps[session_id]) > len(record.steps),
                "RecordLlmCall": len(calls[session_id]) > len(record.calls),
                "AppendLogs": len(logs[session_id]) > record.logs,
                "CompleteSession": row.status == "completed",
            }[method]
        )
        if applied:
            findings.unknown_applied += 1
        else:
            findings.unknown_absent += 1
    findings.sessions = len(stored)


def check_outbox_and_ledger(
    main: sa.Engine, legacy: sa.Engine, findings: Findings
) -> None:
    S, OB, LEDGER = schema.sessions, schema.outbox, ls.applied_events
    with main.connect() as connection:
        expected = {
            str(session_id): int(sequence)
            for session_id, sequence in connection.execute(
                sa.select(S.c.session_id, S.c.event_sequence)
            )
        }
        outbox = _grouped(connection, sa.select(OB.c.session_id, OB.c.sequence))
        findings.unsettled = int(
            connection.execute(
                sa.select(sa.func.count()).where(OB.c.status.in_(("pending", "dead")))
            ).scalar_one()
        )
    with legacy.connect() as connection:
        # The ledger row's transaction id says when it was written: a batch
        # takes a session's next event only after the previous one's batch
        # committed, so ids must not fall as the sequence rises. (applied_at
        # cannot say it: a batch reads its clock before it claims.)
        ledger: dict[str, list[Any]] = defaultdict(list)
        written = sa.literal_column("xmin::text::bigint").label("written")
        for row in connection.execute(
            sa.select(LEDGER.c.session_id, LEDGER.c.sequence, written)
        ):
            ledger[row.session_id].append((int(row.sequence), int(row.written)))
        for table, key in ((ls.prompt_success_tracking, "SessionId"),
                           (ls.llm_usage_logs, "RequestId")):  # fmt: skip
            column = table.c[key]
            doubled = connection.execute(
                sa.select(column).group_by(column).having(sa.func.count() > 1)
            ).all()
            findings.duplicates += len(doubled)
            for (value,) in doubled[:5]:
                findings.problem(f"{table.name}: two rows for {value}")
    for session_id, total in expected.items():
        findings.events += total
        wanted = list(range(1, total + 1))
        if sorted(outbox[session_id]) != wanted:
            findings.problem(
                f"{session_id}: outbox sequences {sorted(outbox[session_id])}"
            )
            findings.lost += 1
        applied = sorted(ledger.get(session_id, []))
        sequences = [sequence for sequence, _ in applied]
        if sequences != wanted:
            extra = len(sequences) - len(set(sequences))
            findings.duplicates += extra
            findings.lost += len(set(wanted) - set(sequences))
            findings.problem(f"{session_id}: ledger sequences {sequences}")
        times = [at for _, at in applied]
        if times != sorted(times):
            findings.out_of_order += 1
            findings.problem(f"{session_id}: applied out of order {applied}")


def check(system: System, load: Load) -> Findings:
    findings = Findings()
    main = create_engine(system.main_url)
    legacy = create_engine(system.legacy_url)
    try:
        check_own_tables(main, load, findings)
        check_outbox_and_ledger(main, legacy, findings)
        report = verify(main, legacy, derive.SessionFilter())
        findings.verify_gaps = report.total("missing") + report.total("different")
        findings.duplicates += report.total("extra")
        if not report.covered:
            findings.problem(f"verify: {report.as_dict()}")
    finally:
        main.dispose()
        legacy.dispose()
    return findings
