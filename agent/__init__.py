"""edgeroute's on-device daemon: routes each chat query to a local or cloud expert."""

__version__ = "0.1.0"
