"""relayq's load and benchmark tools: a ghz-compatible Locust gRPC load tool and the bench."""
