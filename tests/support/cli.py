"""Driving the dstack CLI against any URL (the server, or the proxy in front of it).

Each command runs with an isolated `HOME` and an empty stdin; the once-a-day update check is
skipped (see `cli_env`). These work (checked on 0.22.5); each call takes ~3 s, mostly imports:

    dstack project add --name main --url URL --token TOKEN -y
        # NAME must be an existing project (checked with POST /api/projects/main/get);
        # writes $HOME/.dstack/config.yml; the first project added is the default.
    dstack apply -f task.dstack.yml -y -d [--no-repo]
        # "Run NAME submitted, detaching...", exit 0; upstream calls:
        # repos/init, runs/get_plan, fleets/list, runs/apply.
    dstack ps [--json] [-a]
    dstack stop -y NAME      # one run per call: runs/get, runs/stop; prints "Stopped"
    dstack stop -x -y NAME   # abort: "Aborted" (termination_reason aborted_by_user)

`dstack apply` needs no git repo: a configuration without `repos:` runs without one. Setting
`DSTACK_SERVER_URL`, `DSTACK_TOKEN` and `DSTACK_PROJECT` (`env=` of `run_cli`) needs no
`project add`. The CLI prints its errors on stdout and exits with 1.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.runs import task_yaml
from harness.server import PathLike, dstack_executable, isolated_env


class CliError(subprocess.CalledProcessError):
    """A `dstack` CLI call exited with a non-zero code; the message includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout or ''}\nstderr:\n{self.stderr or ''}"


def cli_env(home: PathLike, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a `dstack` CLI call with `HOME=home`, without inherited `DSTACK_*`.

    Also touches `<home>/.cache/.dstack/cli/last_check` so that the CLI skips
    its once-per-day update check (an HTTP call to get.dstack.ai). Pass
    `{"DSTACK_SERVER_URL": ..., "DSTACK_TOKEN": ..., "DSTACK_PROJECT": ...}`
    as `extra` to skip `dstack project add` altogether.
    """
    home_path = Path(home).absolute()
    marker = home_path / ".cache" / ".dstack" / "cli" / "last_check"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return isolated_env(home_path, extra)


def run_cli(
    args: Sequence[str],
    home: PathLike,
    cwd: PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    check: bool = False,
    input: str | None = None,
    executable: PathLike | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `dstack <args>` non-interactively with an isolated `HOME`.

    Args:
        args: arguments after `dstack`, e.g. `["ps", "--json"]`.
        home: `HOME` for the CLI; it holds `.dstack/config.yml`.
        cwd: working directory (default: `home`). For `dstack apply` with
            `task_yaml` any directory works, inside a git repo or not.
        env: extra environment variables (see `cli_env`).
        check: raise `CliError` (a `CalledProcessError`) on a non-zero exit code.
        input: text for stdin (stdin is empty otherwise, so the CLI never waits for input).
        executable: another version's `dstack` (default: the one next to this interpreter).

    Returns:
        The completed process, with `stdout`/`stderr` as text. The CLI
        prints its error messages on **stdout** (e.g. ``Failed to connect to
        dstack server ...``), with exit code 1.

    Raises:
        CliError: when `check` is true and the exit code is not zero.
    """
    home_path = Path(home).absolute()
    home_path.mkdir(parents=True, exist_ok=True)
    full_env = cli_env(home_path, env)
    full_env.setdefault("COLUMNS", "200")  # keep rich tables from truncating names
    cp = subprocess.run(
        [str(executable or dstack_executable()), *args],
        cwd=str(Path(cwd).absolute() if cwd is not None else home_path),
        env=full_env,
        input="" if input is None else input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and cp.returncode != 0:
        raise CliError(cp.returncode, cp.args, cp.stdout, cp.stderr)
    return cp


def cli_add_project(
    home: PathLike, name: str, url: str, token: str, *, executable: PathLike | None = None
) -> None:
    """`dstack project add --name NAME --url URL --token TOKEN -y`.

    `name` must be an existing project on the server that the token's user
    can see. The CLI checks this with `POST /api/projects/{name}/get` and
    exits with code 1 otherwise, e.g. ``Failed to connect to dstack server
    URL``. The first project added becomes the CLI's default project. A CLI without the
    `project` command (0.18.x) is given `dstack config --project NAME --url URL --token TOKEN`.

    Raises:
        CliError: the command failed.
    """
    added = run_cli(
        ["project", "add", "--name", name, "--url", url, "--token", token, "-y"],
        home,
        executable=executable,
    )
    if added.returncode == 2 and "invalid choice: 'project'" in added.stderr:
        # 0.18.x has no `project` command: `dstack config` does the same there.
        added = run_cli(
            ["config", "--project", name, "--url", url, "--token", token, "-y"],
            home,
            executable=executable,
        )
    if added.returncode != 0:
        raise CliError(added.returncode, added.args, added.stdout, added.stderr)


def write_task_file(
    directory: PathLike,
    run_name: str | None = None,
    filename: str = "task.dstack.yml",
    *,
    user: str | None = None,
) -> Path:
    """Write `task_yaml` to `directory/filename` and return the path."""
    path = Path(directory) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(task_yaml(run_name, user=user))
    return path
