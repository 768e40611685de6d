"""The README's Python example, run as written against ``processflow dev``
(server and relay in one process): it records a session that ``show`` then
prints, covered in the legacy view."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.dev_process import running_dev
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "python" / "record_session.py"


def test_readme_example_runs_against_processflow_dev(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'dev.db'}"
    with running_dev(database) as dev:
        env = {**os.environ, "PROCESSFLOW_TARGET": dev.target}
        example = subprocess.run(
            [sys.executable, str(EXAMPLE)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert example.returncode == 0, example.stderr
        recorded = re.search(r"recorded (\S+): 4 top-level steps", example.stdout)
        assert recorded is not None, example.stdout

        def shown() -> str | None:
            show = subprocess.run(
                [sys.executable, "-m", "processflow.cli", "show", recorded[1]],
                capture_output=True,
                text=True,
                env={**env, "COLUMNS": "80", "PYTHONIOENCODING": "utf-8"},
                timeout=60,
            )
            assert show.returncode == 0, show.stderr
            return show.stdout if "Legacy view covered" in show.stdout else None

        tree = wait_for(shown, timeout=30, interval=0.2, message="legacy coverage")
    assert "✓ completed" in tree.splitlines()[0]
    assert "│  └─ ✓ Context Gathering" in tree
    assert "⇢ openai/gpt-4o  420+60 tok  $0.0030" in tree
    assert re.search(r"└─ ✓ SQL Execution +\d+ ms", tree)


def test_readme_shows_the_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert EXAMPLE.read_text() in blocks, (
        "README.md's Python example differs from examples/python/record_session.py"
    )
