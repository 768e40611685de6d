"""The container image, without a Docker engine: the Dockerfile is read, its
builder stage is replayed into a clean virtual environment (same files, same
script, same lock file), and the final stage's entry point, environment and
health check are run as the image would run them, on free ports."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from processflow.cli import build_parser
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_SCRIPT = "tools/build_venv.sh"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args


def read_stages(text: str) -> list[Stage]:
    """The Dockerfile's stages with their instructions (continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            stages[-1].instructions.append((keyword, " ".join(args.split())))
    return stages


def parse_env(args: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(args))


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"expected the exec (JSON) form, got {args!r}"
    return [str(part) for part in value]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return read_stages(DOCKERFILE.read_text())


def test_dockerfile_shape(stages: list[Stage]) -> None:
    builder, final = stages
    assert builder.name == "builder"
    assert builder.image == final.image
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", final.image), final.image
    assert any(BUILD_SCRIPT in run for run in builder.all("RUN"))
    (copied,) = [c for c in final.all("COPY") if c.startswith("--from=builder")]
    venv = builder_venv(builder)
    assert copied.split()[1:] == [venv, venv]

    user = final.one("USER").split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    env = parse_env(" ".join(final.all("ENV")))
    assert env["PATH"].startswith(f"{venv}/bin:")
    listen_port = env["PROCESSFLOW_LISTEN"].rsplit(":", 1)[1]
    metrics_port = env["PROCESSFLOW_METRICS_LISTEN"].rsplit(":", 1)[1]
    assert env["PROCESSFLOW_LISTEN"] == "0.0.0.0:50051"
    assert set(final.one("EXPOSE").split()) == {listen_port, metrics_port}

    assert exec_form(final.one("ENTRYPOINT")) == ["processflow"]
    assert exec_form(final.one("CMD")) == ["serve"]
    check = healthcheck_command(final)
    assert check[:2] == ["processflow", "health"]
    assert check[check.index("--target") + 1] == f"127.0.0.1:{listen_port}"


def test_dockerignore_keeps_every_copied_path(stages: list[Stage]) -> None:
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copied_sources(stages[0]):
        assert source.rstrip("/") in kept, f".dockerignore drops {source}"
        assert (ROOT / source).exists(), f"the Dockerfile copies a missing {source}"


def builder_venv(builder: Stage) -> str:
    (run,) = [r for r in builder.all("RUN") if BUILD_SCRIPT in r]
    words = shlex.split(run)
    return words[words.index(BUILD_SCRIPT) + 1]


def copied_sources(builder: Stage) -> list[str]:
    sources: list[str] = []
    for args in builder.all("COPY"):
        *parts, _destination = shlex.split(args)
        sources.extend(parts)
    return sources


def healthcheck_command(final: Stage) -> list[str]:
    args = final.one("HEALTHCHECK")
    return exec_form(args[args.index("CMD ") + len("CMD ") :])


@dataclass
class BuiltImage:
    """The builder stage replayed on this machine, and the final stage's setup."""

    venv: Path
    env: dict[str, str]
    workdir: Path
    command: list[str]
    healthcheck: list[str]


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    builder, final = read_stages(DOCKERFILE.read_text())
    root = tmp_path_factory.mktemp("image")

    # COPY: the same files into a fresh context, as WORKDIR-relative paths.
    context = root / "src"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.db")
    for args in builder.all("COPY"):
        *sources, destination = shlex.split(args)
        for source in sources:
            origin = ROOT / source
            target = context / destination / (origin.name if origin.is_file() else "")
            if origin.is_dir():
                shutil.copytree(origin, context / destination, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, target)

    # RUN: the builder's script with the venv moved into the temporary directory.
    image_venv = builder_venv(builder)
    venv = root / "venv"
    (run,) = [r for r in builder.all("RUN") if BUILD_SCRIPT in r]
    words = [str(venv) if w == image_venv else w for w in shlex.split(run)]
    build_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    built = subprocess.run(
        words, cwd=context, env=build_env, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]

    # ENV / WORKDIR / ENTRYPOINT + CMD / HEALTHCHECK of the final stage.
    env = {"HOME": str(root), "LANG": "C.UTF-8"}
    for args in final.all("ENV"):
        for name, value in parse_env(args).items():
            value = value.replace("$PATH", os.environ["PATH"])
            env[name] = value.replace(image_venv, str(venv))
    workdir = root / "workdir"
    workdir.mkdir()
    command = exec_form(final.one("ENTRYPOINT")) + exec_form(final.one("CMD"))
    return BuiltImage(venv, env, workdir, command, healthcheck_command(final))


def run(
    image: BuiltImage, argv: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=image.workdir, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def serve_process(
    image: BuiltImage, pg_empty_url: str
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        **image.env,
        "PROCESSFLOW_DATABASE_URL": pg_empty_url,
        "PROCESSFLOW_LISTEN": image.env["PROCESSFLOW_LISTEN"].replace(
            ":50051", f":{grpc_port}"
        ),
        "PROCESSFLOW_METRICS_LISTEN": image.env["PROCESSFLOW_METRICS_LISTEN"].replace(
            ":9464", f":{metrics_port}"
        ),
    }
    # Like compose.yaml: the one-shot migration first, then the server.
    migrated = run(image, ["processflow", "migrate"], env)
    assert migrated.returncode == 0, migrated.stderr

    process = subprocess.Popen(
        image.command,
        cwd=image.workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield (
            process,
            {**env, "GRPC_PORT": str(grpc_port), "METRICS_PORT": str(metrics_port)},
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_image_entrypoint_serves_and_stops_on_sigterm(
    image: BuiltImage, serve_process: tuple[subprocess.Popen[str], dict[str, str]]
) -> None:
    process, env = serve_process
    check = [
        part.replace(":50051", f":{env['GRPC_PORT']}") for part in image.healthcheck
    ]

    def healthy() -> bool:
        assert process.poll() is None, (
            f"serve exited early: {process.stdout and process.stdout.read()}"
        )
        return run(image, check, env).returncode == 0

    wait_for(healthy, timeout=30, interval=0.25, message="the HEALTHCHECK to pass")

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert run(image, check, env).returncode != 0, "health passes with no server"


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _options_by_command() -> dict[str, set[str]]:
    """command -> its flags and PROCESSFLOW_ variables, from the real parser."""
    known: dict[str, set[str]] = {}
    (commands,) = [
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    for name, sub in commands.choices.items():
        options = known.setdefault(name, set())
        for action in sub._actions:
            options.update(action.option_strings)
            options.update(
                re.findall(r"\[env (PROCESSFLOW_[A-Z0-9_]+)\]", action.help or "")
            )
    return known


def test_compose_runs_migrate_then_server_and_relays() -> None:
    compose = _compose()
    services: dict[str, dict[str, Any]] = compose["services"]

    postgres = services["postgres"]
    (volume,) = postgres["volumes"]
    assert volume.split(":")[0] in compose["volumes"], "PostgreSQL needs a named volume"
    assert "pg_isready" in postgres["healthcheck"]["test"]

    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}

    roles: dict[str, list[str]] = {}
    for name, service in services.items():
        if name in ("postgres", "migrate"):
            continue
        roles.setdefault(service["command"][0], []).append(name)
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    assert len(roles["serve"]) == 1
    assert len(roles["relay"]) == 2


def test_compose_uses_only_real_options_and_publishes_metrics() -> None:
    known = _options_by_command()
    published: list[str] = []
    for name, service in _compose()["services"].items():
        if name == "postgres":
            continue
        assert service["build"] == "."
        command: list[str] = service["command"]
        options = known[command[0]]
        for word in command[1:]:
            if word.startswith("--"):
                assert word in options, f"{name}: {command[0]} has no {word}"
        for variable in service["environment"]:
            assert variable in options, f"{name}: {command[0]} has no {variable}"
        if "--metrics-listen" in command:
            port = command[command.index("--metrics-listen") + 1].rsplit(":", 1)[1]
            (mapping,) = [p for p in service["ports"] if p.endswith(f":{port}")]
            published.append(mapping.split(":")[0])
    assert len(published) == 3
    assert len(set(published)) == len(published), "two services publish one port"
