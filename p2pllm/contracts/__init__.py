"""Package data: the compiled contracts as JSON (see `p2pllm.artifacts`)."""
