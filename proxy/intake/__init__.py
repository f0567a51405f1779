"""The batchable route, the HTTP adapter of the batching core: whether a request fits a batch,
its admission and answer (`route.Intake`), shadow mode, the core built from the configuration,
and the batch calls over HTTP. It uses both the edge and the core (docs/design.md, Map)."""
