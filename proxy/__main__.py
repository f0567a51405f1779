"""`dstack-coalescer` / `python -m proxy`: read the configuration, configure logging, serve."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence

from .config import ConfigError, load_config
from .ops.logs import configure_logging
from .serving import serve


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        print(f"dstack-coalescer: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config.event_loop)) as runner:
            runner.run(serve(config))
    except OSError as exc:  # e.g. the port is taken
        print(f"dstack-coalescer: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, or asyncio's own. uvloop takes less CPU per request, a little more
    memory (docs/design.md, Decisions); asyncio's is there for platforms without uvloop."""
    if name == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
