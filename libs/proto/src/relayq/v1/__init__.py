"""Generated protobuf and gRPC code for relayq.v1 (made by scripts/gen_proto.sh; do not edit)."""
