"""dstack-coalescer: a request-coalescing reverse proxy for the dstack server."""

__version__ = "0.1.0"
