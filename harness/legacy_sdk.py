"""Run by ANOTHER dstack version's interpreter (not importable here): create task runs with that
version's SDK. Reads `{"url", "token", "project", "confs": [task configuration]}` as JSON on stdin
and prints `{run name: status}`. Standard library and that version's `dstack` only."""

import json
import sys

from dstack._internal.core.models.configurations import parse_run_configuration
from dstack._internal.core.models.repos.virtual import VirtualRepo
from dstack.api import Client


def main() -> None:
    job = json.load(sys.stdin)
    client = Client.from_config(
        project_name=job["project"], server_url=job["url"], user_token=job["token"]
    )
    # 0.18.x needs a repo for every run; a virtual one holds no code.
    repo = VirtualRepo(repo_id="coalescer-tests")
    client.repos.init(repo)
    statuses = {}
    for conf in job["confs"]:
        run = client.runs.submit(
            configuration=parse_run_configuration(conf),
            repo=repo,
            reserve_ports=False,
            run_name=conf["name"],
        )
        statuses[conf["name"]] = run.status.value
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()
