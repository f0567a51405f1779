"""Operations' leaves, used by every layer: Prometheus metrics and structlog logging. Free of
aiohttp, so the batching core can count and log (docs/design.md, Map)."""
