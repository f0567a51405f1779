"""Calls to the dstack HTTP API with the standard library, synchronous and blocking (from an
async test, use `asyncio.to_thread`): users, projects and members."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .server import ServerLike


class ApiError(RuntimeError):
    """A non-2xx answer from the dstack API."""

    def __init__(self, status: int, body: str, path: str) -> None:
        super().__init__(f"POST {path} -> {status}: {body[:500]}")
        self.status = status
        self.body = body
        self.path = path

    def json(self) -> Any:
        return json.loads(self.body)


def api_post(
    server: ServerLike,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    url: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """POST JSON `body` to `path` and return the decoded JSON answer.

    Args:
        server: gives the default base URL and the default (admin) token.
        path: e.g. `"/api/project/main/runs/stop"`.
        token: bearer token; defaults to `server.admin_token`.
        url: base URL to use instead of `server.url` (e.g. a proxy).

    Raises:
        ApiError: on any non-2xx status (`.status`, `.body`).
    """
    base = (url or server.url).rstrip("/")
    data = json.dumps({} if body is None else body).encode()
    req = urllib.request.Request(
        base + path,
        data=data,
        method="POST",
        headers={
            "Authorization": f"Bearer {token or server.admin_token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise ApiError(exc.code, exc.read().decode("utf-8", "replace"), path) from None
    return json.loads(raw) if raw else None


def create_user(
    server: ServerLike, username: str, global_role: str = "user", *, email: str | None = None
) -> str:
    """Create a user as global admin and return their token.

    `POST /api/users/create` returns no token, so it is read with
    `POST /api/users/get_user` (`creds.token`). That call does not rotate
    the token, unlike `users/refresh_token`. A new user has no project
    memberships; use `add_member`, or let them `create_project`.
    """
    body: dict[str, Any] = {"username": username, "global_role": global_role}
    if email is not None:
        body["email"] = email
    api_post(server, "/api/users/create", body)
    user = api_post(server, "/api/users/get_user", {"username": username})
    return str(user["creds"]["token"])


def create_project(server: ServerLike, project: str, *, token: str | None = None) -> None:
    """Create `project`; the creator (admin by default) becomes owner and `admin` member."""
    api_post(server, "/api/projects/create", {"project_name": project}, token=token)


def add_member(
    server: ServerLike,
    project: str,
    username: str,
    role: str = "user",
    *,
    token: str | None = None,
) -> None:
    """Add `username` to `project` with `role` (`admin`/`manager`/`user`).

    Uses `POST /api/projects/{project}/add_members` (0.19.16+). This adds to
    the member list and does not replace it. Older servers (405 there) only have
    `set_members`, which replaces the list: it is sent the current members plus this one.
    """
    member = {"username": username, "project_role": role}
    try:
        api_post(server, f"/api/projects/{project}/add_members", {"members": [member]}, token=token)
        return
    except ApiError as exc:
        if exc.status != 405:
            raise
    current = api_post(server, f"/api/projects/{project}/get", token=token)["members"]
    members = [
        {"username": m["user"]["username"], "project_role": m["project_role"]}
        for m in current
        if m["user"]["username"] != username
    ]
    api_post(
        server,
        f"/api/projects/{project}/set_members",
        {"members": [*members, member]},
        token=token,
    )
