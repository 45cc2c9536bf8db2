"""Package data: the gateway's page of the network (`index.html`, plain HTML, CSS and JS; no CDN)."""
