"""`cacheproxy ca`, run as a real subprocess: creates the CA in forward.ca_dir when it is
missing and prints what a browser needs to trust it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from cacheproxy.tls.ca import KEY_FILE, LocalCA, fingerprint_sha256, spki_sha256


def run_ca(*args: str, cwd: Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    # Our own variables are removed so the caller's environment cannot change the outcome.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CACHEPROXY_")}
    return subprocess.run([sys.executable, "-m", "cacheproxy", "ca", *args], cwd=cwd,
                          env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=60)


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def test_creates_the_ca_then_shows_the_same_one(tmp_path: Path) -> None:
    ca_dir = tmp_path / "state" / "ca"
    config = tmp_path / "cacheproxy.toml"
    config.write_text(f'[forward]\nca_dir = "{ca_dir}"\n')
    first = printed(run_ca("--config", str(config), cwd=tmp_path))
    cert_path = ca_dir / "ca-cert.pem"
    assert first["certificate"] == f"{cert_path} (created now)"
    assert stat.S_IMODE((ca_dir / KEY_FILE).stat().st_mode) == 0o600
    ca = LocalCA.load_or_create(ca_dir)
    assert first["SHA-256 fingerprint"] == fingerprint_sha256(ca.certificate)
    assert first["SPKI hash"] == spki_sha256(ca.certificate)
    assert f"--ignore-certificate-errors-spki-list={first['SPKI hash']}" in first["trust it"]
    assert len(first) == 4  # one line on how to trust it
    shown = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in",
                            str(cert_path)], capture_output=True, text=True, check=True)
    assert shown.stdout.strip().endswith(first["SHA-256 fingerprint"])

    again = printed(run_ca("--config", str(config), cwd=tmp_path))
    assert again["certificate"] == str(cert_path)  # found, not made again
    assert again["SPKI hash"] == first["SPKI hash"]


def test_ca_dir_from_the_environment(tmp_path: Path) -> None:
    result = printed(run_ca(cwd=tmp_path, env={"CACHEPROXY_FORWARD_CA_DIR": str(tmp_path / "e")}))
    assert result["certificate"].startswith(str(tmp_path / "e" / "ca-cert.pem"))


def test_the_default_is_the_user_data_directory(tmp_path: Path) -> None:
    result = printed(run_ca(cwd=tmp_path, env={"XDG_DATA_HOME": str(tmp_path / "data")}))
    assert result["certificate"] == f"{tmp_path / 'data' / 'cacheproxy' / 'ca-cert.pem'} " \
                                    "(created now)"
    home = printed(run_ca(cwd=tmp_path, env={"XDG_DATA_HOME": "", "HOME": str(tmp_path)}))
    assert home["certificate"].startswith(
        str(tmp_path / ".local" / "share" / "cacheproxy" / "ca-cert.pem"))


def test_a_broken_ca_is_one_line_and_exit_1(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    LocalCA.load_or_create(ca_dir)
    (ca_dir / "ca-cert.pem").unlink()
    result = run_ca(cwd=tmp_path, env={"CACHEPROXY_FORWARD_CA_DIR": str(ca_dir)})
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cacheproxy: ca: {ca_dir / 'ca-cert.pem'}: ")
    assert "missing" in lines[0]


def test_a_config_mistake_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[forward]\nca_dir = 1\n")
    result = run_ca("--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("cacheproxy: config error: forward.ca_dir: ")
    assert not (tmp_path / "ca").exists()
