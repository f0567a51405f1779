"""nginx from Debian in two roles, each a single process (`master_process off`): the fast
upstream (answers `null` to anything from memory, and a 1 MiB file at /blob), and a plain
reverse proxy with kept-alive upstream connections, the reference pass-through."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.support.processes import Process, find_free_port

BLOB_PATH = "/blob"
BLOB_BYTES = 1 << 20

_COMMON = """
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    {http}
}}
"""

_UPSTREAM = """
    server {{
        listen 127.0.0.1:{port};
        location = {blob} {{ alias {dir}/blob; default_type application/octet-stream; }}
        location / {{ default_type application/json; return 200 'null'; }}
    }}
"""

_PASSTHROUGH = """
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


def nginx_executable() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise SystemExit("nginx not found: apt-get install nginx wrk (or run `make bench` as root)")
    return found


class Nginx(Process):
    """One nginx process with its own prefix directory; `http` is the body of its http block."""

    def __init__(self, workdir: Path, http: str, port: int, ready_path: str = "/") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        conf = workdir / "nginx.conf"
        conf.write_text(_COMMON.format(dir=workdir, http=http))
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


def passthrough(workdir: Path, upstream_url: str) -> Nginx:
    """nginx as a plain reverse proxy in front of `upstream_url`."""
    port = find_free_port()
    upstream = upstream_url.removeprefix("http://")
    return Nginx(workdir, _PASSTHROUGH.format(port=port, upstream=upstream), port)
