"""relayq."""
