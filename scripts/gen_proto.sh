#!/usr/bin/env bash
# The one way to (re)generate relayq's gRPC code from proto/. CI runs it and fails on drift.
# Output: libs/proto/src/relayq/v1/*_pb2.py, *_pb2_grpc.py and .pyi stubs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/libs/proto/src"
python=${PYTHON:-"$root/.venv/bin/python"}

rm -f "$out"/relayq/v1/*_pb2*.py "$out"/relayq/v1/*_pb2*.pyi
bin=$(dirname "$python")
# Typed stubs (.pyi) for messages and services come from mypy-protobuf's plugins.
"$python" -m grpc_tools.protoc \
  -I "$root/proto" \
  --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
  --python_out="$out" \
  --mypy_out="$out" \
  --grpc_python_out="$out" \
  --mypy_grpc_out="$out" \
  "$root"/proto/relayq/v1/*.proto
echo "generated: $(cd "$out" && ls relayq/v1/*_pb2*.py* | tr '\n' ' ')"
