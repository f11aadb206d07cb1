"""Build hook: the gRPC protocol's messages are compiled from lsmha/serving/proto/*.proto
by grpc_tools.protoc (a build requirement, pyproject.toml) whenever the Python files are
built, for wheels and editable installs alike; the generated *_pb2.py are not committed.
Everything else about the package is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def compile_protos() -> None:
    """Write lsmha/serving/proto/NAME_pb2.py beside each NAME.proto."""
    try:
        from grpc_tools import protoc
    except ImportError as err:
        raise RuntimeError(
            "building lsmha needs grpcio-tools (a build requirement in pyproject.toml): build with pip's default "
            "isolation, or pip install 'grpcio-tools~=1.76.0' before --no-build-isolation"
        ) from err

    for proto in sorted((ROOT / "lsmha" / "serving" / "proto").glob("*.proto")):
        if protoc.main(["protoc", f"--proto_path={ROOT}", f"--python_out={ROOT}", str(proto)]) != 0:
            raise RuntimeError(f"protoc failed on {proto}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
