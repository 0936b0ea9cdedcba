"""Send: rendered messages → the configured mail backend, recorded in the delivery ledger."""
