"""The `cacheproxy` command, run as a real subprocess: exit statuses and what stderr says."""

import os
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest

from cacheproxy.cli import main
from cacheproxy.config import Config
from cacheproxy.config.values import usable_cores


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    # Our own variables are removed so the caller's environment cannot change the outcome.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "cacheproxy", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_config_error(result: subprocess.CompletedProcess, key: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cacheproxy: config error: {key}: ")
    assert result.stdout == ""


def test_bad_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[cache]\nmax_bytes = "-1MiB"\n')
    result = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert_config_error(result, "cache.max_bytes")
    assert "a size cannot be negative" in result.stderr


def test_default_config_file_is_read_from_cwd(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "cacheproxy.toml").write_text("[cache]\nmax_byte = 1\n")
    result = run_cli("serve", cwd=tmp_path)
    assert_config_error(result, "cache.max_byte")
    assert "unknown key" in result.stderr


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[proxy\n")
    result = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert_config_error(result, str(config))
    assert "invalid TOML" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", "nope.toml", cwd=tmp_path)
    assert_config_error(result, "nope.toml")
    assert result.stderr.strip().endswith("file not found")


def test_bad_env_var_names_the_variable(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, env={"CACHEPROXY_PROXY_READ_TIMEOUT": "soon"})
    assert_config_error(result, "CACHEPROXY_PROXY_READ_TIMEOUT")


def test_bad_flags_name_the_key(tmp_path: Path) -> None:
    assert_config_error(run_cli("serve", "--upstream", "ftp://x", cwd=tmp_path), "proxy.upstream")
    assert_config_error(run_cli("serve", "--listen", "nowhere", cwd=tmp_path), "proxy.listen")


def test_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"cacheproxy {version('cacheproxy')}"


def test_no_subcommand_prints_help_and_exits_2(tmp_path: Path) -> None:
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: cacheproxy" in result.stderr
    assert "serve" in result.stderr


def test_unknown_subcommand_exits_2(tmp_path: Path) -> None:
    result = run_cli("serv", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_help_exits_0(tmp_path: Path) -> None:
    result = run_cli("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "--upstream URL" in result.stdout


# --- in process: what serve does with the server's outcome ---------------------------------------
# The server module is replaced by a stand-in so these exercise only the CLI's contract; the real
# server's start-up failures are tested against real sockets with the server itself.


@pytest.fixture
def server_outcome(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, object]:
    outcome: dict[str, object] = {}

    def run(config: Config, reload: object = None) -> None:
        outcome["config"], outcome["reload"] = config, reload
        if "raise" in outcome:
            raise outcome["raise"]  # type: ignore[misc]

    module = types.ModuleType("cacheproxy.proxy.server")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cacheproxy.proxy.server", module)
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("CACHEPROXY_")]:
        monkeypatch.delenv(name)
    return outcome


def test_serve_passes_flags_as_overrides(server_outcome: dict[str, object]) -> None:
    argv = ["serve", "--upstream", "http://127.0.0.1:3000", "--listen", "127.0.0.1:0"]
    assert main(argv) == 0
    config = server_outcome["config"]
    assert isinstance(config, Config)
    assert config.proxy.upstream == "http://127.0.0.1:3000"
    assert config.proxy.listen == "127.0.0.1:0"


def test_serve_workers_flag_and_reload_reads_the_same_sources(
    server_outcome: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["serve", "--workers", "3", "--upstream", "http://127.0.0.1:3000"]) == 0
    config = server_outcome["config"]
    assert isinstance(config, Config) and config.proxy.workers == 3
    reload = server_outcome["reload"]
    assert callable(reload)
    monkeypatch.setenv("CACHEPROXY_PROXY_VIA", "edge-9")  # what SIGHUP would now read
    again = reload()
    assert again.proxy.via == "edge-9" and again.proxy.workers == 3
    assert again.proxy.upstream == "http://127.0.0.1:3000"


def test_serve_workers_auto_is_the_usable_cores(server_outcome: dict[str, object]) -> None:
    assert main(["serve", "--workers", "auto", "--upstream", "http://127.0.0.1:3000"]) == 0
    config = server_outcome["config"]
    assert isinstance(config, Config) and config.proxy.workers == usable_cores()


def test_serve_workers_must_be_a_count(
    server_outcome: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--workers", "0"]) == 2
    assert capsys.readouterr().err.startswith("cacheproxy: config error: proxy.workers: ")


def test_serve_reports_os_error(
    server_outcome: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    server_outcome["raise"] = OSError(98, "Address already in use")
    assert main(["serve"]) == 1
    assert capsys.readouterr().err == "cacheproxy: [Errno 98] Address already in use\n"


def test_serve_ctrl_c_is_quiet(
    server_outcome: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    server_outcome["raise"] = KeyboardInterrupt()
    assert main(["serve"]) == 0
    assert capsys.readouterr().err == ""


def test_bad_config_does_not_reach_the_server(
    server_outcome: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--listen", "x"]) == 2
    assert "config" not in server_outcome
    assert capsys.readouterr().err.startswith("cacheproxy: config error: proxy.listen: ")
