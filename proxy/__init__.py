"""dstack-coalescer: a request-coalescing reverse proxy for the dstack server."""
