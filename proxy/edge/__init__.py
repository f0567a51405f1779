"""The edge: pass-through, one client request in, one upstream request out. The upstream client
(target check, URL, headers, sessions), header policy, forwarding with its connection slots,
WebSocket relaying, and the proxy's own answers. It knows nothing of batching (the layer
contracts in pyproject.toml keep it so; docs/design.md, Map)."""
