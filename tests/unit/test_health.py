"""How the health command finds the proxy's own flags in a process's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.health import pid1_flags, proxy_flags


@pytest.mark.parametrize(
    ("cmdline", "flags"),
    [
        # The image's CMD: the console script, run by the venv's python through its shebang.
        (
            b"/opt/dstack-coalescer/bin/python\0/opt/dstack-coalescer/bin/dstack-coalescer\0"
            b"--admin-port\0009191\0",
            ["--admin-port", "9191"],
        ),
        (b"dstack-coalescer\0", []),
        (b"python3\0-m\0proxy\0--config\0/etc/c.yaml\0", ["--config", "/etc/c.yaml"]),
        (b"python\0-m\0proxy.health\0--admin-port\0001\0", None),
        (b"/sbin/docker-init\0--\0sleep\0infinity\0", None),
        (b"", None),
    ],
)
def test_proxy_flags_come_only_from_a_command_line_that_runs_the_proxy(
    cmdline: bytes, flags: list[str] | None
) -> None:
    assert proxy_flags(cmdline) == flags


def test_pid1_flags_are_empty_when_pid1_is_not_the_proxy_or_cannot_be_read(
    tmp_path: Path,
) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"dstack-coalescer\0--admin-port\0009999\0")
    assert pid1_flags(cmdline) == ["--admin-port", "9999"]
    cmdline.write_bytes(b"/usr/sbin/nginx\0")
    assert pid1_flags(cmdline) == []
    assert pid1_flags(tmp_path / "missing") == []
