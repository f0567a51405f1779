"""The batching core, free of HTTP (no aiohttp; the layer contracts in pyproject.toml keep it
so): the endpoint table and body test, what a batch is and its key, the generic batcher with
its waiting batches, flush policies and clock, admission caps, and the dispatcher that answers
each caller of a batch through a `send` seam (docs/design.md, Map)."""
