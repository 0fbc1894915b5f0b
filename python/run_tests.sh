#!/usr/bin/env bash
# The Python client's tests as `make test` runs them (ctest python_client_test): installs
# the package from this folder the way a user does (pip install ./python, which generates
# the gRPC stubs from proto/) into BUILD_DIR/python-site, then runs pytest against the
# coldfused, coldfusectl and coldfuse-client of BUILD_DIR.
#   python/run_tests.sh BUILD_DIR [PYTEST_ARGS...]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BUILD="$(cd "$1" && pwd)"
shift
PY="$HERE/../.venv/bin/python"
[ -x "$PY" ] || PY=/usr/bin/python3
SITE="$BUILD/python-site"
rm -rf "$SITE"
# Dependencies (grpcio, protobuf, numpy, torch) are Debian's: scripts/install-deps.sh.
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
  --target "$SITE" "$HERE"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export COLDFUSE_BUILD="$BUILD"
cd "$HERE/tests"
exec "$PY" -m pytest -q -p no:cacheprovider "$@" .
