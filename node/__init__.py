"""The node role: shard executor and sessions, HTTP app, receipt ledger and claims, pricing agent, CLI."""
