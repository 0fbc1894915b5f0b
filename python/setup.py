"""Generates the gRPC stubs (coldfuse/v1/*_pb2*.py and .pyi) from the project's proto/
folder while the package is built, so they always match the server's protocol and are
never copied by hand. Looks for the protos in $COLDFUSE_PROTO_DIR, else ../proto (a
checkout of the coldfuse repository), else ./proto (an sdist)."""
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ["coldfuse/v1/tensor.proto", "coldfuse/v1/coldfuse.proto"]


def proto_dir():
    for d in (os.environ.get("COLDFUSE_PROTO_DIR"), os.path.join(HERE, "..", "proto"),
              os.path.join(HERE, "proto")):
        if d and all(os.path.exists(os.path.join(d, p)) for p in PROTOS):
            return os.path.abspath(d)
    sys.exit("coldfuse: cannot find proto/coldfuse/v1/*.proto (set COLDFUSE_PROTO_DIR)")


def generate(out_dir):
    src = proto_dir()
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    args = [f"-I{src}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}"] + [os.path.join(src, p) for p in PROTOS]
    if protoc and plugin:
        cmd = [protoc, f"--plugin=protoc-gen-grpc_python={plugin}"] + args
    else:
        try:
            import grpc_tools  # noqa: F401  (pip install grpcio-tools)
        except ImportError:
            sys.exit("coldfuse: generating the gRPC stubs needs protoc and grpc_python_plugin "
                     "(Debian: apt install protobuf-compiler protobuf-compiler-grpc) or "
                     "`pip install grpcio-tools`")
        cmd = [sys.executable, "-m", "grpc_tools.protoc"] + args
    subprocess.run(cmd, check=True)


class BuildWithStubs(build_py):
    def run(self):
        os.makedirs(os.path.join(self.build_lib, "coldfuse", "v1"), exist_ok=True)
        generate(self.build_lib)
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
