"""Generate Python stubs and Envoy's descriptor set from proto/.

Third-party protos are taken from the installed packages that ship them
(googleapis-common-protos for google/api and google/rpc, grpcio-tools for the
well-known types); they are linked under .build/protodeps for buf, never copied.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = ROOT / "gen"
BUILD_DIR = ROOT / ".build"
DEPS_DIR = BUILD_DIR / "protodeps"
DESCRIPTOR_SET = BUILD_DIR / "podmesh.pb"
# Only what our contracts import (and what Envoy must see to render errors).
GOOGLE_DEPS = ("api", "rpc")


def googleapis_root() -> Path:
    return Path(next(iter(google.api.__path__))).parent.parent


def wkt_root() -> Path:
    return Path(next(iter(grpc_tools.__path__))) / "_proto"


def link_deps() -> None:
    for package in GOOGLE_DEPS:
        target = DEPS_DIR / "google" / package
        target.mkdir(parents=True, exist_ok=True)
        for proto in (googleapis_root() / "google" / package).glob("*.proto"):
            link = target / proto.name
            if not link.is_symlink() or link.resolve() != proto.resolve():
                link.unlink(missing_ok=True)
                link.symlink_to(proto)


def contract_files() -> list[str]:
    return sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))


def generate() -> None:
    link_deps()
    shutil.rmtree(GEN_DIR, ignore_errors=True)
    GEN_DIR.mkdir(parents=True)
    files = contract_files()
    # error_details must be in the descriptor set or Envoy silently stops
    # rendering google.rpc.Status details as JSON.
    extra = ["google/rpc/error_details.proto", "google/rpc/status.proto"]
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{googleapis_root()}",
        f"-I{wkt_root()}",
        f"--python_out={GEN_DIR}",
        f"--pyi_out={GEN_DIR}",
        f"--grpc_python_out={GEN_DIR}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={GEN_DIR}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed generating Python stubs")
    descriptor_args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{googleapis_root()}",
        f"-I{wkt_root()}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={DESCRIPTOR_SET}",
        *files,
        *extra,
    ]
    if protoc.main(descriptor_args) != 0:
        raise SystemExit("protoc failed writing the descriptor set")
    (GEN_DIR / "podmesh").mkdir(exist_ok=True)
    for package_dir in [
        GEN_DIR / "podmesh",
        *(p for p in (GEN_DIR / "podmesh").rglob("*") if p.is_dir()),
    ]:
        (package_dir / "__init__.py").touch()
    (GEN_DIR / "podmesh" / "py.typed").touch()


if __name__ == "__main__":
    generate()
