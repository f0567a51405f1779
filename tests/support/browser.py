"""A real browser for the UI tests: Debian's headless Chromium, driven by Playwright for Python
through `executable_path` (`playwright install` downloads a browser build, which cannot be
reached here and is not needed), and the runs page of the web UI that dstack 0.18.40 serves
itself, as a person uses it: the checkboxes, the Stop, Delete and refresh buttons, the table.

What the 0.18.40 UI does (its source, `frontend/src/pages/Runs/List/` at tag 0.18.40, and the
bundle in the wheel's `dstack/_internal/server/statics`):
- the runs list (`/runs`, `?project=NAME` picks the project) shows 20 runs a page;
- Stop and Delete group the selected runs by project *and run id*, so they send one
  `runs/stop` (`{"runs_names": [name], "abort": false}`) or `runs/delete`
  (`{"runs_names": [name]}`) per selected run, all at once, with no confirmation dialog;
- Stop is enabled only when every selected run is submitted/provisioning/pulling/pending/
  running, Delete only when every one is failed/aborted/done/terminated;
- after Stop it clears the selection; after Delete it keeps it; neither refreshes the table,
  whose rows are its own copy of the last `runs/list` answer: a person clicks the refresh
  button to see the new state;
- a failed call shows a red "Server error: ..." flash (Cloudscape's Flashbar) for 6 s.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Page, Playwright, Response

SETUP = Path(__file__).with_name("setup_chromium.sh")

# Headless without a sandbox (root, no user namespaces), and nothing that reaches out: no QUIC,
# no background updates or sync. The UI's page links Google Fonts; every host but loopback is
# resolved to "not found" at once, so no request leaves the machine or waits on the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)

# Marks every error flash the page ever shows (they vanish after 6 s), and every uncaught error.
_WATCH_ERRORS = """
(() => {
  const seen = (window.__uiErrors = []);
  const ERROR = '[class*="awsui_flash-type-error"]';
  const look = (node) => {
    if (node.nodeType !== 1) return;
    if (node.matches(ERROR)) seen.push(node.textContent);
    for (const el of node.querySelectorAll(ERROR)) seen.push(el.textContent);
  };
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) look(n);
  }).observe(document, { childList: true, subtree: true });
})();
"""

# (name, status) of each run row of the table, by the header's column names.
_ROWS = """
() => {
  const table = [...document.querySelectorAll('table')].find((t) => t.querySelector('tbody tr'));
  if (!table) return [];
  const heads = [...table.querySelectorAll('thead th')].map((th) => th.textContent.trim());
  const name = heads.indexOf('Name'), status = heads.indexOf('Status');
  return [...table.querySelectorAll('tbody tr')]
    .filter((tr) => tr.children.length === heads.length)
    .map((tr) => [tr.children[name].textContent.trim(), tr.children[status].textContent.trim()]);
}
"""

# The protocol each finished request to `path` went over ("http/1.1", "h2"), from the page.
_PROTOCOLS = """
(path) => performance.getEntriesByType('resource')
  .filter((e) => new URL(e.name).pathname.endsWith(path))
  .map((e) => e.nextHopProtocol)
"""


def chromium_executable() -> str:
    """Debian's Chromium, installed by `setup_chromium.sh` when missing (as root, as CI runs).
    Raises with the script's reason when it cannot be had: the tests then fail, never skip."""
    done = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=1200, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{SETUP.name} failed:\n{done.stderr[-3000:]}")
    kind, _, path = done.stdout.strip().splitlines()[-1].partition(" ")
    if kind != "chromium" or not path:
        raise RuntimeError(f"{SETUP.name} printed no path:\n{done.stdout}")
    return path


@contextmanager
def open_page(
    playwright: Playwright,
    executable: str,
    profile: Path,
    *,
    ignore_certificate_errors: bool = False,
) -> Iterator[Page]:
    """A page of a fresh Chromium profile in `profile`; with `ignore_certificate_errors` it
    takes a test's self-signed certificate (still TLS, still HTTP/2 by ALPN)."""
    flags = list(CHROMIUM_FLAGS)
    if ignore_certificate_errors:
        flags.append("--ignore-certificate-errors")
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=executable,
        args=flags,
        headless=True,
        viewport={"width": 1600, "height": 1000},
        ignore_https_errors=ignore_certificate_errors,
    )
    try:
        context.add_init_script(_WATCH_ERRORS)
        yield context.new_page()
    finally:
        context.close()


@dataclass
class Action:
    """One click on Stop or Delete: the UI's calls it caused and when their answers came."""

    endpoint: str  # "runs/stop" or "runs/delete"
    clicked: float  # time.monotonic() of the click
    responses: list[tuple[float, Response]] = field(default_factory=list)
    answered: float | None = None  # seconds from the click to the last answer
    shown: float | None = None  # seconds from the click to the table showing the final state
    paused: float = 0.0  # seconds the test spent on screenshots meanwhile, left out of `shown`

    @property
    def bodies(self) -> list[str]:
        return [r.request.post_data or "" for _, r in self.responses]

    @property
    def statuses(self) -> list[int]:
        return [r.status for _, r in self.responses]


class LegacyRunsUI:
    """The runs page of the 0.18.40 UI at `base`, in `page`; each step can be screenshotted
    into `artifacts` (`NN-step.png`)."""

    def __init__(self, page: Page, base: str, artifacts: Path) -> None:
        self.page, self.base, self.artifacts = page, base, artifacts
        self.shots: list[Path] = []
        self.page_errors: list[str] = []
        self._action: Action | None = None
        self.api_failures: list[tuple[int, str]] = []  # (status, path) of API calls >= 400
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("response", self._on_response)

    def _on_response(self, response: Response) -> None:
        action = self._action
        if action is not None and response.url.endswith("/" + action.endpoint):
            action.responses.append((time.monotonic(), response))
        path = "/" + response.url.split("://", 1)[-1].partition("/")[2]
        if path.startswith("/api/") and response.status >= 400:
            self.api_failures.append((response.status, path))

    def screenshot(self, step: str) -> Path:
        path = self.artifacts / f"{len(self.shots) + 1:02d}-{step}.png"
        start = time.monotonic()
        self.page.screenshot(path=str(path), full_page=True)
        if self._action is not None and self._action.shown is None:
            self._action.paused += time.monotonic() - start
        self.shots.append(path)
        return path

    def log_in(self, token: str) -> None:
        """The login page's token form, as a person fills it."""
        self.page.goto(self.base + "/")
        self.page.get_by_placeholder("Token").fill(token)
        self.screenshot("login")
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(lambda url: url.rstrip("/") != self.base and "/auth" not in url)

    def open_runs(self, project: str, expect: Sequence[str]) -> None:
        """The runs list of `project`, once it shows every run of `expect`."""
        self.page.goto(f"{self.base}/runs?project={project}")
        self.wait_rows(lambda rows: set(expect) <= set(rows), "the runs to be listed")
        self.screenshot("runs-list")

    def rows(self) -> dict[str, str]:
        """{run name: status text} of the table as it shows now."""
        return dict(self.page.evaluate(_ROWS))

    def wait_rows(self, done: Callable[[dict[str, str]], bool], what: str, timeout=30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done(rows := self.rows()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the table shows {rows}")
            self.page.wait_for_timeout(50)

    def select(self, names: Sequence[str]) -> None:
        """Tick each run's checkbox, one click per run."""
        for name in names:
            link = self.page.get_by_role("link", name=name, exact=True)
            self.page.locator("tbody tr", has=link).locator("input[type=checkbox]").check()

    def click(self, button: str, endpoint: str, calls: int, timeout: float = 60.0) -> Action:
        """Click `button` and wait for the answers to the `calls` requests to `endpoint` it
        sends; the answers' times are those of Playwright's response events, polled every
        10 ms. Later requests to `endpoint` are still recorded, until the next click: a stray
        one shows in `responses`."""
        action = Action(endpoint, time.monotonic())
        self._action = action
        self.page.get_by_role("button", name=button, exact=True).click()
        deadline = action.clicked + timeout
        while len(action.responses) < calls:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(action.responses)} of {calls} {endpoint} answered")
            self.page.wait_for_timeout(10)
        action.answered = max(t for t, _ in action.responses) - action.clicked
        return action

    def refresh_until(
        self, action: Action, done: Callable[[dict[str, str]], bool], what: str, timeout=120.0
    ) -> dict[str, str]:
        """Click the refresh button, as a person would, until the table shows `done`; sets
        `action.shown`, from the click on the action to that table."""
        deadline = time.monotonic() + timeout
        refresh = self.page.get_by_role("button", name="Refresh")
        while True:
            with self.page.expect_response(lambda r: r.url.endswith("/api/runs/list")):
                refresh.click()
            # The table is redrawn from that answer a moment later, once the button is back.
            self.page.wait_for_function(
                "() => !document.querySelector('button[aria-label=\"Refresh\"]').disabled"
            )
            rows = self.rows()
            if done(rows):
                action.shown = time.monotonic() - action.clicked - action.paused
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the table shows {rows}")
            self.page.wait_for_timeout(200)

    def shown_errors(self) -> list[str]:
        """Texts of every error flash the page showed since it was loaded."""
        return list(self.page.evaluate("() => window.__uiErrors ?? []"))

    def protocols(self, path: str) -> list[str]:
        """The protocol of each request of the page to `path` ("http/1.1", "h2")."""
        return list(self.page.evaluate(_PROTOCOLS, path))
