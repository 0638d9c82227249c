"""Generate the Python gRPC stubs from protos/archloop/v1/*.proto into archloop/v1/.

The proto directory layout equals the package (`archloop.v1`), so the generated imports
(`from archloop.v1 import common_pb2`) resolve without path hacks. The build runs this
(setup.py's build_py); `make proto` runs it by hand after editing a .proto file.

    python protos/generate.py [--out DIR]     # DIR defaults to the repository root
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = Path("archloop") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Compile every proto under protos/archloop/v1 into out_root/archloop/v1; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    target = out_root / PACKAGE_DIR
    target.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")
    init = target / "__init__.py"
    init.write_text('"""Generated from protos/archloop/v1 by protos/generate.py; do not edit."""\n')
    return sorted(target.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT.parent)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
