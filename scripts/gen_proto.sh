#!/usr/bin/env bash
# The one way to (re)generate relayq's gRPC code from proto/. CI runs it and fails on drift.
# Output: libs/proto/src/relayq/v1/*_pb2.py, *_pb2_grpc.py and .pyi stubs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/libs/proto/src"
python=${PYTHON:-"$root/.venv/bin/python"}

rm -f "$out"/relayq/v1/*_pb2*.py "$out"/relayq/v1/*_pb2*.pyi
"$python" -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "$root"/proto/relayq/v1/*.proto
echo "generated: $(cd "$out" && ls relayq/v1/*_pb2*.py* | tr '\n' ' ')"
