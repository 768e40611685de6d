"""``processflow show`` and ``processflow watch`` as real processes against a
real ``processflow serve``, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from processflow.client import Tracker
from tests.support.polling import wait_for
from tests.support.server import ServerProcess

PROCESSFLOW = [sys.executable, "-m", "processflow.cli"]
# A terminal of 80 columns whose encoding carries the tree glyphs.
TERMINAL = {
    **os.environ,
    "COLUMNS": "80",
    "LINES": "24",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONUNBUFFERED": "1",
}


def processflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROCESSFLOW, *args],
        capture_output=True,
        text=True,
        env=TERMINAL,
        timeout=60,
    )


def record_failed_run(target: str) -> str:
    with Tracker(target) as pf:
        with pf.session(
            user_id="john.doe@company.com",
            query="Show me total sales by region for last quarter " * 3,
            intent="aggregation",
            domain="sales",
        ) as s:
            with s.step("auth") as auth:
                auth.confidence = 0.99
            with s.step("prompt-building") as building:
                with building.step("context-gathering"):
                    pass
                building.tokens_used = 1250
            with s.step("ai-generation") as generation:
                generation.llm_call(
                    provider="openai",
                    model="gpt-4",
                    input_tokens=1250,
                    output_tokens=180,
                    cost_usd=0.0483,
                    duration_ms=1840,
                )
            with s.step("sql-execution") as execution:
                execution.fail("Timeout expired. " * 8)
            s.fail("SQL execution failed", generated_sql="SELECT 1")
        return s.session_id


def test_show_prints_the_tree_in_80_columns(served: ServerProcess) -> None:
    session_id = record_failed_run(served.address)

    shown = processflow("show", session_id, "--target", served.address)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].startswith(f"Session {session_id}  ✗ error  ")
    assert lines[1].startswith("User john.doe@company.com  started ")
    assert lines[2].startswith("Query Show me total sales") and lines[2].endswith("…")
    assert lines[3] == "intent aggregation  domain sales  type enhanced"
    assert lines[4] == ("Tokens 1,430 (1,250 in / 180 out)  cost $0.0483  1 LLM call")
    assert re.fullmatch(
        r"Legacy view (pending|covered): \d+/8 events applied.*", lines[5]
    )
    assert lines[6:8] == ["SQL SELECT 1", "Error SQL execution failed"]
    assert lines[8] == "─" * 80
    # The tree with its columns; durations vary, so they become "D", kept
    # right-aligned in their column.
    tree = [
        re.sub(r"\b\d+(\.\d+)? m?s\b", lambda m: "D".rjust(len(m[0])), line)
        for line in lines[9:]
    ]
    assert tree == [
        "├─ ✓ Authentication & Authorization                           D             0.99",  # noqa: E501
        "├─ ✓ Prompt Construction                                      D   1,250 tok",
        "│  └─ ✓ Context Gathering                                     D",
        "├─ ✓ AI SQL Generation                                        D",
        "│    ⇢ openai/gpt-4  1,250+180 tok  $0.0483       D",
        "└─ ✗ SQL Execution                                            D",
        "     ! Timeout expired. Timeout expired. Timeout expired. Timeout expired. Time…",  # noqa: E501
    ]


def test_show_json_and_failures(served: ServerProcess, tmp_path: Path) -> None:
    session_id = record_failed_run(served.address)

    as_json = processflow("show", session_id, "--json", "--target", served.address)
    assert as_json.returncode == 0, as_json.stderr
    session = json.loads(as_json.stdout)["session"]
    assert session["session_id"] == session_id
    assert session["status"] == "SESSION_STATUS_ERROR"
    assert [s["step_type"] for s in session["steps"]] == [
        "auth",
        "prompt-building",
        "ai-generation",
        "sql-execution",
    ]
    assert session["steps"][1]["children"][0]["step_type"] == "context-gathering"

    unknown = processflow("show", "no-such-session", "--target", served.address)
    assert unknown.returncode == 1
    assert "no session 'no-such-session'" in unknown.stderr

    unreachable = processflow(
        "show", session_id, "--target", "127.0.0.1:1", "--deadline-seconds", "2"
    )
    assert unreachable.returncode == 2
    assert "cannot reach the server at 127.0.0.1:1" in unreachable.stderr


def test_watch_follows_a_session_written_by_another_client(
    served: ServerProcess, tmp_path: Path
) -> None:
    output = tmp_path / "watch.txt"
    with Tracker(served.address) as pf:
        session = pf.session(user_id="u1", query="live question")
        session.__enter__()
        with open(output, "w") as out:
            watcher = subprocess.Popen(
                [
                    *PROCESSFLOW,
                    "watch",
                    session.session_id,
                    "--target",
                    served.address,
                    "--timeout-seconds",
                    "60",
                ],
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                env=TERMINAL,
            )
        try:

            def shown(text: str) -> bool:
                return text in output.read_text()

            wait_for(lambda: shown("(no steps yet)"), timeout=30, message="snapshot")
            with session.step("auth"):
                wait_for(lambda: shown("└─ ▶ Authentication"), timeout=30)
            wait_for(lambda: shown("└─ ✓ Authentication"), timeout=30)
            with session.step("ai-generation") as generation:
                generation.llm_call(model="gpt-4o", input_tokens=10, output_tokens=2)
            session.__exit__(None, None, None)
            _, errors = watcher.communicate(timeout=30)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()

    assert watcher.returncode == 0, errors
    text = output.read_text()
    separators = re.findall(r"^--- revision (\d+): (\w+) ---$", text, re.MULTILINE)
    revisions = [int(number) for number, _ in separators]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert separators[0][1] == "snapshot"
    states = text.split("--- revision ")[1:]
    assert len(states) == len(separators) >= 4
    assert "▶ running" in states[0]
    assert "✓ completed" in states[-1]
    assert "⇢ gpt-4o  10+2 tok" in states[-1]
    assert all(len(line) <= 80 for state in states for line in state.splitlines()[1:])


def test_watch_stops_at_its_deadline_or_for_an_unknown_session(
    served: ServerProcess,
) -> None:
    with Tracker(served.address) as pf:
        running = pf.session(user_id="u1", query="never ends")
        running.__enter__()
        timed_out = processflow(
            "watch",
            running.session_id,
            "--target",
            served.address,
            "--timeout-seconds",
            "1",
        )
        running.__exit__(None, None, None)
    assert timed_out.returncode == 1
    assert "still running" in timed_out.stderr
    assert "--- revision" in timed_out.stdout

    unknown = processflow("watch", "no-such-session", "--target", served.address)
    assert unknown.returncode == 1
    assert "no session 'no-such-session'" in unknown.stderr
