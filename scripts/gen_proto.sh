#!/usr/bin/env bash
# The one way to (re)generate relayq's gRPC code from proto/. CI runs it and fails on drift.
# Output: libs/proto/src/relayq/v1/*_pb2.py, *_pb2_grpc.py and .pyi stubs.
#   scripts/gen_proto.sh          regenerate in place
#   scripts/gen_proto.sh --check  regenerate into a temporary folder and fail on any difference
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
committed="$root/libs/proto/src"
python=${PYTHON:-"$root/.venv/bin/python"}
out="$committed"
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  mkdir -p "$out/relayq/v1"
fi

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
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -q -x __init__.py -x py.typed -x __pycache__ "$out/relayq/v1" "$committed/relayq/v1"; then
    echo "generated gRPC code is out of date: run scripts/gen_proto.sh and commit the result" >&2
    exit 1
  fi
  echo "generated gRPC code matches proto/"
else
  echo "generated: $(cd "$out" && ls relayq/v1/*_pb2*.py* | tr '\n' ' ')"
fi
