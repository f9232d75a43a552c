"""``dlq-tool``: the operator's CLI for the dead-letter queue, a thin gRPC client of dlq-svc.

It imports only the generated ``relayq.v1`` package, grpc and the standard library: it never
touches the DLQ's tables or dlq-svc's own modules.
"""
