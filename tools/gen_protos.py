"""Regenerate the Python modules and typed stubs from protos/.

Run with the project's virtual environment, whose grpcio-tools and
mypy-protobuf versions are pinned in constraints.txt:

    python tools/gen_protos.py           # write processflow/v1/
    python tools/gen_protos.py --check   # exit 1 when the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("processflow") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)


def generated_files(directory: Path) -> set[str]:
    return {
        p.name
        for p in (directory / PACKAGE).glob("*")
        if p.name.endswith(GENERATED_SUFFIXES)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when stale")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        target = ROOT / PACKAGE
        names = generated_files(fresh)
        if args.check:
            stale = sorted(
                name
                for name in names | generated_files(ROOT)
                if not (target / name).exists()
                or not (fresh / PACKAGE / name).exists()
                or not filecmp.cmp(fresh / PACKAGE / name, target / name, shallow=False)
            )
            if stale:
                print("generated code is stale; run tools/gen_protos.py:", *stale)
                return 1
            print(f"generated code is fresh ({len(names)} files)")
            return 0
        for old in generated_files(ROOT):
            (target / old).unlink()
        for name in sorted(names):
            shutil.copyfile(fresh / PACKAGE / name, target / name)
        print(f"wrote {len(names)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
