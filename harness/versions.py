"""The dstack server versions the real-server tests run against: the pinned one of the dev
extra (`CURRENT_VERSION`), and 0.18.40 (the server behind the legacy web UI) in its own virtual
environment.

`legacy_dstack()` builds `.venv-legacy` at the repository root on first use (~20 s on a 2-core
machine, from PyPI) and reuses it while its stamp matches the pinned set. 0.18.40 pins its own
dependencies loosely; `tests/legacy/dstack-0.18.40-constraints.txt` is the set that works on
Python 3.11. `python -m harness.versions` builds it ahead of time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

CURRENT_VERSION = importlib.metadata.version("dstack")
LEGACY_VERSION = "0.18.40"
ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "tests" / "legacy" / f"dstack-{LEGACY_VERSION}-constraints.txt"
VENV = Path(os.environ.get("COALESCER_LEGACY_VENV", ROOT / ".venv-legacy"))


def _stamp() -> str:
    return hashlib.sha256(LEGACY_VERSION.encode() + CONSTRAINTS.read_bytes()).hexdigest()


def legacy_dstack() -> Path:
    """The `dstack` entry point of the legacy environment, built first if missing or stale."""
    stamp = VENV / ".installed"
    dstack = VENV / "bin" / "dstack"
    if stamp.is_file() and stamp.read_text() == _stamp() and dstack.exists():
        return dstack
    shutil.rmtree(VENV, ignore_errors=True)
    # The base interpreter, not this venv's: the legacy set must not see the dev dependencies.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*pip, f"dstack[server]=={LEGACY_VERSION}", "-c", str(CONSTRAINTS)],
        check=True,
    )
    stamp.write_text(_stamp())
    return dstack


if __name__ == "__main__":
    print(legacy_dstack())
