"""Configuration: defaults, precedence (flags > env > file > defaults) and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.batching.endpoints import DEFAULT_ENDPOINTS
from proxy.config import OPTIONS, Config, ConfigError, load_config, read_file
from proxy.edge.headers import is_trusted

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coalescer.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_documented_values() -> None:
    config = load_config([], {})
    assert config == Config()
    assert (config.upstream, config.port, config.admin_host, config.admin_port) == (
        "http://127.0.0.1:3000",
        8080,
        "127.0.0.1",
        9090,
    )
    assert (config.mode, config.window, config.max_batch) == ("on", 0.02, 500)
    assert config.max_wait == 35.0
    assert (config.policy, config.max_names, config.quiet_ms) == ("quiet", 200, 5)
    assert config.trusted_proxies == ()
    assert config.endpoints == DEFAULT_ENDPOINTS
    assert "repos/delete" not in {e.name for e in config.enabled_endpoints}


def test_the_repository_config_yaml_parses_to_exactly_the_defaults() -> None:
    assert load_config(["--config", str(REPO_CONFIG)], {}) == Config()


def test_the_repository_config_yaml_documents_every_option() -> None:
    assert set(yaml.safe_load(REPO_CONFIG.read_text(encoding="utf-8"))) == set(OPTIONS)


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "port: 1001\nwindow_ms: 11\nmax_batch: 7\n")
    environ = {"COALESCER_CONFIG": str(path), "COALESCER_PORT": "1002", "COALESCER_WINDOW_MS": "12"}

    config = load_config(["--port", "1003"], environ)

    assert (config.port, config.window_ms, config.max_batch, config.max_pending) == (
        1003,
        12,
        7,
        Config().max_pending,
    )


def test_the_config_flag_beats_the_config_variable(tmp_path: Path) -> None:
    by_flag = write_yaml(tmp_path, "port: 1001\n")
    by_env = tmp_path / "other.yaml"
    by_env.write_text("port: 1002\n", encoding="utf-8")

    config = load_config(["--config", str(by_flag)], {"COALESCER_CONFIG": str(by_env)})

    assert config.port == 1001


def test_values_from_the_environment_are_parsed_like_any_other() -> None:
    environ = {
        "COALESCER_TRUSTED_PROXIES": "10.0.0.1, ::1",
        "COALESCER_CONNECT_TIMEOUT": "2.5",
        "COALESCER_MODE": "SHADOW",
    }
    config = load_config([], environ)
    assert (config.trusted_proxies, config.connect_timeout, config.mode) == (
        ("10.0.0.1", "::1"),
        2.5,
        "shadow",
    )


def test_the_endpoint_table_is_read_from_the_file_only(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        (
            "endpoints:\n"
            "  - name: runs/stop\n"
            "    path: /api/project/{project}/runs/stop\n"
            "    list_field: runs_names\n"
            "    equal_fields: {abort: bool}\n"
        ),
    )
    config = load_config(["--config", str(path)], {"COALESCER_ENDPOINTS": "[]"})
    assert [(e.name, e.equal_fields) for e in config.endpoints] == [
        ("runs/stop", (("abort", "bool"),))
    ]


ENDPOINT_WITH_ENABLED = (
    "endpoints:\n"
    "  - name: runs/delete\n"
    "    path: /api/project/{project}/runs/delete\n"
    "    list_field: runs_names\n"
    "    enabled: %s\n"
)


@pytest.mark.parametrize("yaml_value", ["false", "off", "no"])
def test_a_yaml_false_disables_an_endpoint(tmp_path: Path, yaml_value: str) -> None:
    path = write_yaml(tmp_path, ENDPOINT_WITH_ENABLED % yaml_value)
    assert load_config(["--config", str(path)], {}).enabled_endpoints == ()


@pytest.mark.parametrize("yaml_value", ['"false"', '"off"', "0"])
def test_a_quoted_false_never_enables_an_endpoint(tmp_path: Path, yaml_value: str) -> None:
    path = write_yaml(tmp_path, ENDPOINT_WITH_ENABLED % yaml_value)
    try:
        config = load_config(["--config", str(path)], {})
    except ConfigError:
        return  # refusing the value is as good as reading it as false
    assert config.enabled_endpoints == ()


@pytest.mark.parametrize(
    ("yaml_value", "mode"),
    [("on", "on"), ("off", "off"), ('"on"', "on"), ("shadow", "shadow"), ("Off", "off")],
)
def test_yaml_mode_on_and_off_work_although_yaml_reads_them_as_booleans(
    tmp_path: Path, yaml_value: str, mode: str
) -> None:
    path = write_yaml(tmp_path, f"mode: {yaml_value}\n")
    assert load_config(["--config", str(path)], {}).mode == mode


# Bad values. Each case: where the bad value comes from, and what the message must name.

FILE = "config file"


@pytest.mark.parametrize(
    ("argv", "environ", "file_text", "must_name"),
    [
        pytest.param(
            ["--port", "70000"], {}, None, ["port", "flag --port", "70000"], id="port out of range"
        ),
        pytest.param(
            [],
            {"COALESCER_PORT": "http"},
            None,
            ["port", "environment COALESCER_PORT", "http"],
            id="port not a number",
        ),
        pytest.param([], {}, "port: true\n", ["port", FILE, "True"], id="port as yaml bool"),
        pytest.param(
            [],
            {"COALESCER_WINDOW_MS": "abc"},
            None,
            ["window_ms", "environment COALESCER_WINDOW_MS", "abc"],
            id="window_ms text",
        ),
        pytest.param(
            ["--window-ms", "-1"],
            {},
            None,
            ["window_ms", "flag --window-ms", "-1"],
            id="window_ms negative",
        ),
        pytest.param(
            [], {}, "window_ms: 2.5\n", ["window_ms", FILE, "2.5"], id="window_ms fraction"
        ),
        pytest.param([], {}, "mode: sometimes\n", ["mode", FILE, "sometimes"], id="mode"),
        pytest.param(
            [],
            {},
            "upstream: http://127.0.0.1:3000/api\n",
            ["upstream", FILE, "http://127.0.0.1:3000/api"],
            id="upstream with a path",
        ),
        pytest.param(
            ["--upstream", "ftp://dstack:21"],
            {},
            None,
            ["upstream", "flag --upstream", "ftp://dstack:21"],
            id="upstream scheme",
        ),
        pytest.param(
            ["--log-format", "xml"],
            {},
            None,
            ["log_format", "flag --log-format", "xml"],
            id="log_format",
        ),
        pytest.param(
            [],
            {"COALESCER_TRUSTED_PROXIES": "10.0.0.1,proxy.local"},
            None,
            ["trusted_proxies", "environment COALESCER_TRUSTED_PROXIES", "proxy.local"],
            id="trusted_proxies host name",
        ),
        pytest.param(
            [],
            {},
            "trusted_proxies: [10.0.0.7/8]\n",
            ["trusted_proxies", FILE, "10.0.0.7/8"],
            id="trusted_proxies network with host bits",
        ),
        pytest.param(
            ["--connect-timeout", "nan"],
            {},
            None,
            ["connect_timeout", "flag --connect-timeout", "nan"],
            id="timeout nan",
        ),
        pytest.param(
            ["--max-batch", "0"],
            {},
            None,
            ["max_batch", "flag --max-batch", "0"],
            id="max_batch zero",
        ),
        # The name is the bad value here; the option's value is not repeated.
        pytest.param([], {}, "prot: 8080\n", ["prot", FILE], id="unknown option in file"),
        pytest.param(
            [],
            {},
            (
                "endpoints:\n"
                "  - {name: x, path: '/api/project/{project}/x', list_field: names, colour: red}\n"
            ),
            ["endpoints", FILE, "colour", "unknown endpoint keys"],
            id="endpoint entry with unknown key",
        ),
        pytest.param(
            [],
            {},
            (
                "endpoints:\n"
                "  - {name: projects/remove_members,"
                " path: '/api/projects/{project}/remove_members', list_field: usernames}\n"
            ),
            ["endpoints", FILE, "remove_members", "never be batched"],
            id="remove_members endpoint",
        ),
        pytest.param(
            [], {}, "max_wait_ms: 5\n", ["max_wait_ms", FILE, "5"], id="max_wait_ms below window_ms"
        ),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_option_source_and_value(
    tmp_path: Path,
    argv: list[str],
    environ: dict[str, str],
    file_text: str | None,
    must_name: list[str],
) -> None:
    if file_text is not None:
        argv = ["--config", str(write_yaml(tmp_path, file_text)), *argv]

    with pytest.raises(ConfigError) as caught:
        load_config(argv, environ)

    message = str(caught.value)
    assert "\n" not in message
    for fragment in must_name:
        assert fragment in message
    if file_text is not None:
        assert str(tmp_path / "coalescer.yaml") in message


def test_max_wait_below_window_is_refused() -> None:
    fast = ["--batch-timeout", "0.01", "--connect-timeout", "0.01"]
    with pytest.raises(ConfigError, match="max_wait_ms"):
        load_config(["--window-ms", "50", "--max-wait-ms", "49", *fast], {})
    assert load_config(["--window-ms", "50", "--max-wait-ms", "50", *fast], {}).max_wait_ms == 50


def test_max_wait_below_the_timeouts_of_one_call_is_refused() -> None:
    # Any batch call ends, answered or timed out, within connect_timeout + batch_timeout: the
    # callers behind its flight must never get max_wait's 503 meanwhile.
    with pytest.raises(ConfigError, match=r"34999 .*connect_timeout \+ batch_timeout"):
        load_config(["--max-wait-ms", "34999"], {})
    timeouts = ["--batch-timeout", "4", "--connect-timeout", "1"]
    assert load_config(["--max-wait-ms", "5000", *timeouts], {}).max_wait_ms == 5000


@pytest.mark.parametrize(
    ("file_text", "must_name"),
    [("port: [1\n", "not valid YAML"), ("- port\n", "mapping")],
)
def test_a_file_that_is_not_a_mapping_of_options_fails_with_one_line(
    tmp_path: Path, file_text: str, must_name: str
) -> None:
    path = write_yaml(tmp_path, file_text)
    with pytest.raises(ConfigError) as caught:
        read_file(path)
    assert "\n" not in str(caught.value)
    assert must_name in str(caught.value) and str(path) in str(caught.value)


def test_a_missing_file_fails_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml"):
        load_config(["--config", str(tmp_path / "absent.yaml")], {})


def test_python_m_proxy_with_a_bad_flag_exits_2_with_one_stderr_line(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COALESCER_")}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--window-ms", "abc"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "window_ms" in lines[0] and "abc" in lines[0]
    assert done.stdout == ""


def test_trusted_proxies_take_addresses_and_cidr_networks() -> None:
    environ = {"COALESCER_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/64, 192.168.1.9"}
    config = load_config([], environ)
    assert config.trusted_proxies == ("10.0.0.0/8", "fd00::/64", "192.168.1.9")
    trusted = config.trusted_proxies
    assert is_trusted("10.244.3.17", trusted) and is_trusted("192.168.1.9", trusted)
    assert is_trusted("fd00::1234", trusted)
    assert not is_trusted("11.0.0.1", trusted) and not is_trusted("192.168.1.10", trusted)
    assert not is_trusted("fd01::1", trusted) and not is_trusted(None, trusted)
    assert not is_trusted("10.0.0.1", ())


@pytest.mark.parametrize(
    "upstream",
    [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
        "http://127.0.0.2:8080",
    ],
)
def test_an_upstream_at_the_proxys_own_listener_is_refused(upstream: str) -> None:
    # Each request would be sent back in to the proxy until every upstream slot was taken:
    # a 503 "every upstream connection is in use" after connect_timeout, for every request.
    with pytest.raises(ConfigError, match=r"invalid upstream from flag.*own listen address"):
        load_config(["--upstream", upstream], {})


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--upstream", "http://127.0.0.1:8081"], {}),  # another port
        (["--upstream", "http://10.0.0.7:8080"], {}),  # another host, the same port
        (["--upstream", "http://dstack:8080"], {}),
        (["--upstream", "http://127.0.0.1:8080"], {"COALESCER_PORT": "8081"}),
    ],
)
def test_an_upstream_elsewhere_is_accepted(argv: list[str], environ: dict[str, str]) -> None:
    assert load_config(argv, environ).upstream == argv[1]


def test_an_upstream_at_the_listen_address_itself_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"port 9000 from environment COALESCER_PORT"):
        load_config(
            ["--upstream", "http://10.0.0.7:9000", "--host", "10.0.0.7"], {"COALESCER_PORT": "9000"}
        )
