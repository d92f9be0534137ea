"""Build hook: generate fan_sdk.v1 from the repository's proto/ with grpcio-tools.

The generated modules go straight into the build directory, so the source tree
only holds the hand-written layer. FAN_PROTO_DIR overrides where the .proto
files are (default: ../../proto, this package's place in the fan repository).
"""
import os
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_FILE = "fan/agent/v1/agent.proto"


class GenerateThenBuild(build_py):
    def run(self):
        super().run()
        out = Path(self.build_lib) / "fan_sdk" / "v1"
        generate(Path(os.environ.get("FAN_PROTO_DIR", HERE.parent.parent / "proto")), out)


def generate(proto_dir: Path, out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    if not (proto_dir / PROTO_FILE).is_file():
        raise SystemExit(f"fan-agent-sdk: {proto_dir / PROTO_FILE} not found (set FAN_PROTO_DIR)")
    tmp = out / "_gen"
    tmp.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO_FILE,
        ]
    )
    if code != 0:
        raise SystemExit(f"fan-agent-sdk: protoc failed ({code})")
    generated = tmp / "fan" / "agent" / "v1"
    for name in ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py"):
        text = (generated / name).read_text()
        # protoc's Python imports are absolute from the proto root
        # ("from fan.agent.v1 import agent_pb2"); ship them under fan_sdk.v1
        # instead of claiming a top-level "fan" package.
        text = re.sub(r"^from fan\.agent\.v1 import", "from fan_sdk.v1 import", text, flags=re.M)
        (out / name).write_text(text)
    for path in sorted(tmp.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    tmp.rmdir()


setup(cmdclass={"build_py": GenerateThenBuild})
