"""The client role: routing, hop sessions with failover, generation, wallet, CLI."""
