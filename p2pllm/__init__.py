"""P2P-LLM protocol library shared by nodes and clients: model slicing, wire codec, receipts, chain adapter."""
