"""Runs that stay active without any cloud, and the API calls tests make on runs.

A task with `retry: {on_events: [no-capacity], duration: 1d}` on a server with no backends and
no fleets never gets an instance: it is `submitted` when created, `pending` 5-10 s later, and
then goes back and forth between the two (a resubmission every 15-40 s) for a day. Such runs
keep the server's background pipeline busy (about one CPU with ~130 pending runs; a graceful
shutdown then took ~35 s against ~3 s with 10 active runs). A stopped `pending` run is
`terminated` within ~1 s; a stopped `submitted` one can stay `terminating` for more than 8 s.

The stop race (dstack 0.22.5; docs/dstack-api.md, "The stop race"): `runs/stop` answers 200 and
marks a pending run `terminating`, but the background pipeline can overwrite that within
0.15-2 s and put the run back to `submitted`/`pending`. A 200 from stop therefore does not
guarantee that the run stops; `stop_runs_until_finished` re-stops until it does.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .api import ApiError, api_post
from .server import ServerLike

DEFAULT_PROJECT = "main"
"""Project created by the server at first start, with `admin` as its admin."""

FINISHED_STATUSES: frozenset[str] = frozenset({"terminated", "failed", "done"})
"""Run statuses that `runs/delete` accepts."""

ACTIVE_STATUSES: frozenset[str] = frozenset(
    {"pending", "submitted", "provisioning", "running", "terminating"}
)
"""Every run status that is not finished."""

_RUNS_LIST_PAGE = 100  # the server's largest `limit` for runs/list


def task_configuration(name: str | None = None, *, user: str | None = None) -> dict[str, Any]:
    """A task that stays active on a server without backends.

    `retry.on_events: [no-capacity]` with `duration: 1d` makes the server
    retry the "no fleet/offer" failure for a day instead of failing the run.
    `user`: the task's `user`; dstack 0.18.40 needs `"root"`, or it asks a registry for the
    default image's user (docs/dstack-api.md, "Differences in 0.18.40").
    """
    conf: dict[str, Any] = {
        "type": "task",
        "commands": ["sleep infinity"],
        "retry": {"on_events": ["no-capacity"], "duration": "1d"},
    }
    if name is not None:
        conf["name"] = name
    if user is not None:
        conf["user"] = user
    return conf


def task_yaml(name: str | None = None, *, user: str | None = None) -> str:
    """`task_configuration` as `.dstack.yml` text, for the CLI."""
    return str(yaml.safe_dump(task_configuration(name, user=user), sort_keys=False))


def _create_run(url: str, token: str, project: str, name: str) -> str:
    # Imported lazily: importing the SDK takes ~1.5 s.
    from dstack._internal.core.models.configurations import (  # type: ignore[import-untyped]
        parse_run_configuration,
    )
    from dstack.api import Client  # type: ignore[import-untyped]

    client = Client.from_config(project_name=project, server_url=url, user_token=token)
    run = client.runs.apply_configuration(
        configuration=parse_run_configuration(task_configuration(name)),
        repo=None,
        reserve_ports=False,
    )
    return str(run.status.value)


def _create_runs_with(
    python: Path, url: str, token: str, project: str, names: Sequence[str]
) -> dict[str, str]:
    # Another version's SDK, in its own interpreter: a newer client is refused by an older
    # server (X-API-Version), so each server gets runs from its own SDK.
    confs = [task_configuration(n, user="root") for n in names]
    done = subprocess.run(
        [str(python), str(Path(__file__).with_name("legacy_sdk.py"))],
        input=json.dumps({"url": url, "token": token, "project": project, "confs": confs}),
        capture_output=True,
        text=True,
        timeout=60 + 5 * len(names),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"creating runs with {python} failed:\n{done.stderr[-2000:]}")
    return {str(k): str(v) for k, v in json.loads(done.stdout).items()}


def create_active_runs(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    token: str | None = None,
    *,
    url: str | None = None,
    workers: int = 1,
) -> dict[str, str]:
    """Create one never-ending task run per name with the dstack SDK.

    Each run goes through ``Client.runs.apply_configuration(conf, repo=None,
    reserve_ports=False)`, which sends `runs/get_plan`` and then
    `runs/apply`. The runs come back `submitted` and from then on cycle
    between `submitted` and `pending`; both count as active.

    Measured on a 2-CPU machine, sequentially: 1 run ~0.15-0.25 s (plus ~1.5 s
    for the first SDK import in a process), 10 runs ~2 s, 40 runs ~10-12 s.
    The server does the work, and it is single-process with SQLite, so
    threads bring nothing (10 runs ~2 s, 40 runs 11-15 s with
    8-16 threads). `workers` is kept for other setups. The time per run
    grows as more runs are pending.

    Race (0.22.5): a stopped pending run can bounce back to pending within
    ~2 s. Stop with `stop_runs_until_finished` when it must stick.

    A server of another dstack version (`DstackServer.sdk_python`) gets its runs from its own
    SDK, in its own interpreter (`legacy_sdk.py`), with `user: root`.

    Returns:
        `{name: status}` as returned by `runs/apply` (normally `"submitted"`).
    """
    base = url or server.url
    tok = token or server.admin_token
    if (python := getattr(server, "sdk_python", None)) is not None:
        return _create_runs_with(python, base, tok, project, names)
    if workers <= 1 or len(names) <= 1:
        return {n: _create_run(base, tok, project, n) for n in names}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        statuses = list(pool.map(lambda n: _create_run(base, tok, project, n), names))
    return dict(zip(names, statuses, strict=True))


@dataclass(frozen=True)
class RunInfo:
    """The fields of a run (from `runs/list`) that tests look at."""

    name: str
    id: str
    status: str
    termination_reason: str | None
    deleted: bool
    submitted_at: str

    @property
    def finished(self) -> bool:
        """True for `terminated`/`failed`/`done`, and for deleted runs."""
        return self.deleted or self.status in FINISHED_STATUSES

    @property
    def active(self) -> bool:
        return not self.finished


def list_runs(
    server: ServerLike,
    project: str,
    token: str | None = None,
    *,
    url: str | None = None,
    only_active: bool = False,
) -> list[dict[str, Any]]:
    """Every run of `project` as raw JSON, newest first, all pages.

    `POST /api/runs/list` (a root route; the project is a body field, and
    there is no `/api/project/{p}/runs/list`) returns at most 100 runs per
    page. This function pages with `prev_submitted_at`/`prev_run_id`. In
    0.22.5 deleted runs are still listed, with `"deleted": true`, unless
    `only_active`.
    """
    body: dict[str, Any] = {
        "project_name": project,
        "only_active": only_active,
        "include_jobs": False,
        "limit": _RUNS_LIST_PAGE,
    }
    runs: list[dict[str, Any]] = []
    while True:
        try:
            page = api_post(server, "/api/runs/list", body, token=token, url=url)
        except ApiError as exc:
            if exc.status != 422 or "include_jobs" not in exc.body or "include_jobs" not in body:
                raise
            # 0.18.40 has no `include_jobs` (and always includes them).
            body = {k: v for k, v in body.items() if k != "include_jobs"}
            continue
        runs.extend(page)
        if len(page) < _RUNS_LIST_PAGE:
            return runs
        last = page[-1]
        body = {**body, "prev_submitted_at": last["submitted_at"], "prev_run_id": last["id"]}


def run_infos(
    server: ServerLike,
    project: str,
    token: str | None = None,
    *,
    url: str | None = None,
    include_deleted: bool = True,
) -> dict[str, RunInfo]:
    """`{run name: RunInfo}` for `project`; per name the newest non-deleted row wins.

    A name can have several rows (old deleted runs plus a new one). A live
    row beats a deleted one, and among rows of the same kind the newest wins.
    Names with only deleted rows are left out when `include_deleted` is false.
    """
    result: dict[str, RunInfo] = {}
    for raw in list_runs(server, project, token, url=url):
        info = RunInfo(
            name=raw["run_spec"]["run_name"],
            id=raw["id"],
            status=raw["status"],
            termination_reason=raw.get("termination_reason"),
            deleted=bool(raw.get("deleted")),
            submitted_at=raw["submitted_at"],
        )
        if info.deleted and not include_deleted:
            continue
        prev = result.get(info.name)
        if prev is None or (prev.deleted and not info.deleted):
            result[info.name] = info
    return result


def run_states(
    server: ServerLike,
    project: str,
    token: str | None = None,
    *,
    url: str | None = None,
    include_deleted: bool = False,
    created: Iterable[str] = (),
) -> dict[str, str]:
    """`{run name: status}` for `project`, e.g. `{"r1": "pending", "r2": "terminated"}`.

    Deleted runs are left out by default. With `include_deleted=True` a name
    whose rows are all deleted maps to the pseudo status `"deleted"`; so does a name of
    `created` (runs the caller made) that is no longer listed at all, as dstack 0.18.40
    removes deleted runs from `runs/list`.
    Status values: `pending`, `submitted`, `provisioning`, `running`,
    `terminating`, `terminated`, `failed`, `done`. A stopped pending
    run ends as `terminated` with `termination_reason` `stopped_by_user`
    (or `aborted_by_user` with `abort=true`), usually within a few seconds,
    but see the race in the module docstring.
    """
    infos = run_infos(server, project, token, url=url, include_deleted=include_deleted)
    states = {name: ("deleted" if i.deleted else i.status) for name, i in infos.items()}
    if include_deleted:
        states.update({n: "deleted" for n in created if n not in states})
    return states


def wait_for_runs(
    server: ServerLike,
    project: str,
    names: Iterable[str],
    *,
    finished: bool,
    token: str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
    poll: float = 0.5,
) -> dict[str, str]:
    """Poll until every run in `names` is finished (or deleted), or with `finished=False`
    exists and is active; return `{name: status}`.

    A name that does not exist counts as neither. Because of the upstream race (a stopped
    pending run can go back to `pending`/`submitted` ~0.15-2 s after the stop), waiting
    for `finished` can time out after a stop that answered 200;
    `stop_runs_until_finished` re-stops such runs.

    Raises:
        TimeoutError: listing the runs not yet in the wanted state.
    """
    wanted = list(dict.fromkeys(names))
    deadline = time.monotonic() + timeout
    while True:
        infos = run_infos(server, project, token, url=url)
        pending = [n for n in wanted if n not in infos or infos[n].finished is not finished]
        if not pending:
            return {n: infos[n].status for n in wanted}
        if time.monotonic() > deadline:
            seen = {n: (infos[n].status if n in infos else "missing") for n in pending}
            goal = "finished" if finished else "active"
            raise TimeoutError(f"runs not {goal} after {timeout:.0f}s: {seen}")
        time.sleep(poll)


def stop_runs(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    *,
    abort: bool = False,
    token: str | None = None,
    url: str | None = None,
) -> None:
    """`POST /api/project/{project}/runs/stop` with every name in one request."""
    api_post(
        server,
        f"/api/project/{project}/runs/stop",
        {"runs_names": list(names), "abort": abort},
        token=token,
        url=url,
    )


def delete_runs(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    *,
    token: str | None = None,
    url: str | None = None,
) -> None:
    """`POST /api/project/{project}/runs/delete`; ApiError 400 if any run is unfinished."""
    api_post(
        server,
        f"/api/project/{project}/runs/delete",
        {"runs_names": list(names)},
        token=token,
        url=url,
    )


def stop_runs_until_finished(
    server: ServerLike,
    project: str,
    names: Sequence[str],
    *,
    abort: bool = False,
    token: str | None = None,
    url: str | None = None,
    timeout: float = 60.0,
    recheck_after: float = 3.0,
    poll: float = 0.5,
) -> dict[str, str]:
    """Stop `names` and keep re-stopping runs that come back, until all are finished.

    Works around the 0.22.5 race in which the background pipeline overwrites
    a user's stop. Each round stops every run that is active but not
    `terminating` (the first round: all of `names` that are active), then
    waits up to `recheck_after` s for the runs to finish. A `terminating`
    run is left alone, since it is on its way; a stopped `submitted` run can
    stay `terminating` for more than 8 s. Suited to cleanup
    and to setting up a known state. Do not use it when counting the stop
    requests of the code under test: it sends extra `runs/stop` calls.

    Raises:
        TimeoutError: some runs were still active after `timeout` s.
    """
    deadline = time.monotonic() + timeout
    remaining = list(dict.fromkeys(names))
    first_round = True
    while True:
        infos = run_infos(server, project, token, url=url)
        remaining = [n for n in remaining if n in infos and infos[n].active]
        if not remaining:
            final = run_infos(server, project, token, url=url)
            return {
                n: ("deleted" if final[n].deleted else final[n].status) for n in names if n in final
            }
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still active after {timeout:.0f}s: {remaining}")
        to_stop = [n for n in remaining if first_round or infos[n].status != "terminating"]
        if to_stop:
            stop_runs(server, project, to_stop, abort=abort, token=token, url=url)
        first_round = False
        round_end = min(deadline, time.monotonic() + recheck_after)
        while time.monotonic() < round_end:
            time.sleep(poll)
            infos = run_infos(server, project, token, url=url)
            if all(n not in infos or infos[n].finished for n in remaining):
                break
