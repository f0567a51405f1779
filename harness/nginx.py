"""nginx and other tools from Debian, installed when missing (as root). The one nginx
configuration wrapper every nginx here runs in: everything (pid, logs, temporary files) under its
own directory. Two roles for the benchmarks, each a single process (`master_process off`): the
fast upstream (answers `null` to anything from memory, and a 1 MiB file at /blob), and a plain
reverse proxy with kept-alive upstream connections, the reference pass-through. The shipped
front (tests/support/front.py) runs in the same wrapper."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .processes import Process, find_free_port

BLOB_PATH = "/blob"
BLOB_BYTES = 1 << 20

_WRAPPER = """\
pid {dir}/nginx.pid;
error_log {dir}/error.log {level};
events {{ worker_connections {connections}; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
"""


def write_conf(directory: Path, http: str, level: str = "warn", connections: int = 4096) -> Path:
    """`directory`/nginx.conf: `http` (the body of the http block) in the wrapper that keeps
    every file nginx writes under `directory`; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(_WRAPPER.format(dir=directory, level=level, connections=connections, http=http))
    return conf


def debian_tool(binary: str, package: str) -> str:
    """The path of `binary`, installed from Debian's `package` when missing (CI and `make bench`
    run as root). Raises with the reason when it cannot be had: tests then fail, never skip."""
    path = "/usr/sbin:/usr/local/sbin:/usr/bin"
    found = shutil.which(binary) or shutil.which(binary, path=path)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"{binary} is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]  # another install may hold the lock
    install = [*apt, "install", "-y", "--no-install-recommends", package]
    for args in ([*apt, "update"], install):
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    found = shutil.which(binary, path=path)
    if not found:
        raise RuntimeError(f"{binary} is still missing after apt-get install {package}")
    return found


def nginx_executable() -> str:
    """The nginx binary (Debian's `nginx` package)."""
    return debian_tool("nginx", "nginx")


_BENCH = """\
    access_log off;
    keepalive_requests 1000000;
"""

_UPSTREAM = (
    _BENCH
    + """\
    server {{
        listen 127.0.0.1:{port};
        location = {blob} {{ alias {dir}/blob; default_type application/octet-stream; }}
        location / {{ default_type application/json; return 200 'null'; }}
    }}
"""
)

_PASSTHROUGH = (
    _BENCH
    + """\
    upstream fast {{ server {upstream}; keepalive 100; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 64m;
        location / {{
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 64k;  # large answers in 64 KiB reads, like aiohttp's,
            proxy_buffers 32 64k;  # held in memory,
            proxy_max_temp_file_size 0;  # never spooled to disk
        }}
    }}
"""
)


class Nginx(Process):
    """One nginx process with its own prefix directory; `http` is the body of its http block."""

    def __init__(self, workdir: Path, http: str, port: int, ready_path: str = "/") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        conf = write_conf(workdir, http)
        super().__init__(
            [
                nginx_executable(),
                "-p",
                str(workdir),
                "-c",
                str(conf),
                "-g",
                "daemon off; master_process off;",
            ],
            self.url + ready_path,
            workdir / "stdout.log",
        )


def fast_upstream(workdir: Path) -> Nginx:
    """nginx answering `null` at once to any method and path, and 1 MiB of bytes at /blob."""
    port = find_free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "blob").write_bytes(os.urandom(BLOB_BYTES))
    return Nginx(workdir, _UPSTREAM.format(port=port, dir=workdir, blob=BLOB_PATH), port)


def passthrough(workdir: Path, upstream_url: str, ready_path: str = "/") -> Nginx:
    """nginx as a plain reverse proxy in front of `upstream_url`; started once `ready_path`
    answers 200 through it."""
    port = find_free_port()
    upstream = upstream_url.removeprefix("http://")
    return Nginx(workdir, _PASSTHROUGH.format(port=port, upstream=upstream), port, ready_path)
