"""Generate the Python code of proca-stats' proto into contract/v1/.

    python protos/generate.py           # write contract/v1/*_pb2*.py{,i}
    python protos/generate.py --check   # exit 1 when the committed files are stale

protoc names Python modules after the proto's path (``proca.stats.v1``); the
installed package is ``proca_stats.contract.v1``, so the one import that the gRPC
stubs make of the message module is rewritten to a relative one.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO = "proca/stats/v1/stats.proto"
OUT_DIR = ROOT / "contract" / "v1"
GENERATED = ("stats_pb2.py", "stats_pb2.pyi", "stats_pb2_grpc.py", "stats_pb2_grpc.pyi")
ABSOLUTE_IMPORT = re.compile(r"^from proca\.stats\.v1 import stats_pb2", re.MULTILINE)


def _plugin(name: str) -> str:
    """Locate a protoc plugin installed beside this interpreter (mypy-protobuf)."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        sys.exit(f"error: {name} not found; install the test extras: pip install '.[test]'")
    return found


def generate() -> dict[str, str]:
    """Run protoc and return the generated files' contents by name."""
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        status = protoc.main(
            [
                "protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--proto_path={include}",
                f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
                f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                f"--mypy_out={out}",
                f"--mypy_grpc_out={out}",
                PROTO,
            ]
        )
        if status != 0:
            sys.exit(f"error: protoc failed with status {status}")
        produced = Path(out) / Path(PROTO).parent
        return {
            name: ABSOLUTE_IMPORT.sub("from . import stats_pb2", (produced / name).read_text())
            for name in GENERATED
        }


def stale_files(files: dict[str, str]) -> list[str]:
    """Names of committed files that differ from freshly generated ones."""
    return [
        name
        for name, text in files.items()
        if not (OUT_DIR / name).exists() or (OUT_DIR / name).read_text() != text
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when contract/v1 is stale")
    args = parser.parse_args()
    files = generate()
    if args.check:
        stale = stale_files(files)
        for name in stale:
            old = (OUT_DIR / name).read_text().splitlines() if (OUT_DIR / name).exists() else []
            diff = difflib.unified_diff(old, files[name].splitlines(), name, name, lineterm="")
            print("\n".join(diff))
        if stale:
            sys.exit(f"stale generated code: {', '.join(stale)}; run: python protos/generate.py")
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT_DIR / name).write_text(text)
    (OUT_DIR / "__init__.py").touch()


if __name__ == "__main__":
    main()
