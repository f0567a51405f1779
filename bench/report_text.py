"""Helpers every section of docs/measurements.md shares: verdicts, wrapped paragraphs."""

from __future__ import annotations

import textwrap


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def para(*parts: str, indent: str = "") -> str:
    """One Markdown paragraph (or list item, with `indent`), wrapped at 100 columns."""
    return textwrap.fill(
        "".join(parts),
        100,
        subsequent_indent=indent,
        break_on_hyphens=False,
        break_long_words=False,
    )


def calls(n: int) -> str:
    return f"{n} call" if n == 1 else f"{n} calls"
