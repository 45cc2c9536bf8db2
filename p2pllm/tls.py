"""TLS for the links between machines: the context a client or a relaying node verifies a node's certificate
with (the system's trust store, or a CA file for a private network). Knows nothing about the protocol."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_ssl_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """A context that verifies the server's certificate and host name, against `ca_file` when given."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use CA file {ca_file}: {exc}") from exc
