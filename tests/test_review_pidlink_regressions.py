"""proxy.pid_file and links planted by another user (CWE-59, CWE-377).

`cacheproxy serve` often runs as root, and the README's own example puts its pid file in
/tmp, which every user can write. The claim wrote the pid through `<pid_file>.<pid>.tmp`,
a name anyone can guess, opened with a plain open() that follows a link; it created and
locked the pid file itself following a link too; and `stop` read `<pid_file>.json` with a
plain read that waits on a FIFO. Linux's fs.protected_symlinks stops some of this in
sticky directories, but it is off on some machines (this one) and does nothing outside
them. These tests plant what another user could, in a temporary directory, and run the
claim, release and `stop` as they run in `serve`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from processes import clean_env

from cacheproxy import pidfile
from cacheproxy.lifetime import StartError


def test_a_link_planted_at_the_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    """What was wrong: the pid and `<pid_file>.json` were written to `PATH.<pid>.tmp`
    with open(..., "w"), which follows a link: another user who planted
    `/tmp/cacheproxy.pid.<pid>.tmp -> /etc/something` (a pid is easy to guess) had a root
    `serve` truncate that file and write its pid into it, and the rename then left the
    pid file itself a link to it. Now whatever stands at that name is removed and the file
    made anew (O_EXCL, O_NOFOLLOW): the victim is untouched, the pid file a regular file
    of its own. Severity: high where the pid file is in a shared directory and serve runs
    as root (a file anywhere overwritten)."""
    path = tmp_path / "cacheproxy.pid"
    victims = {}
    for name in (f"{path}.{os.getpid()}.tmp", f"{path}.json.{os.getpid()}.tmp"):
        victim = tmp_path / f"victim-{len(victims)}"
        victim.write_text("precious\n")
        os.symlink(victim, name)
        victims[name] = victim
    try:
        pidfile.claim(str(path), 8.0)
        for victim in victims.values():
            assert victim.read_text() == "precious\n"
        assert not path.is_symlink() and path.read_text() == f"{os.getpid()}\n"
        json_file = Path(pidfile.running_file(str(path)))
        assert not json_file.is_symlink()
        assert pidfile.running_shutdown_timeout(str(path), os.getpid()) == 8.0
        assert not any(os.path.lexists(name) for name in victims)
    finally:
        pidfile.release(str(path))
    assert not path.exists()


def test_a_link_at_the_pid_file_path_is_refused_and_nothing_is_made_where_it_points(
        tmp_path: Path) -> None:
    """What was wrong: the claim opened the pid file with O_CREAT, following a link, to
    lock it: a dangling link planted at the path (`/tmp/cacheproxy.pid -> /etc/cron.d/x`)
    had a root `serve` create that file (empty, owned by root) before it wrote its own
    pid file, and a link to an existing file had it lock and read that file. Now a link
    at the path is refused at once, naming the key: `proxy.pid_file: cannot write PATH: a
    symbolic link: give the path of the file itself`; nothing is created, and the file
    it points to is neither read nor changed. (A link among the directories above it, as
    /var/run -> /run, is followed as before.) Severity: medium (a root-owned empty file
    made where another user chose)."""
    path = tmp_path / "cacheproxy.pid"
    target = tmp_path / "made-elsewhere"
    os.symlink(target, path)
    with pytest.raises(StartError, match=r"proxy\.pid_file: cannot write .*: a symbolic link"):
        pidfile.claim(str(path), 8.0)
    assert not target.exists() and path.is_symlink()
    os.unlink(path)
    target.write_text("precious\n")
    os.symlink(target, path)
    with pytest.raises(StartError, match="a symbolic link: give the path of the file itself"):
        pidfile.claim(str(path), 8.0)
    assert target.read_text() == "precious\n"


def test_the_directories_above_the_pid_file_may_be_links(tmp_path: Path) -> None:
    """The other side of the refusal above: only the file's own name is not followed, so
    a pid file under a linked directory (Debian's /var/run -> /run) is written as before.
    Severity: none (pins what must keep working)."""
    real = tmp_path / "run"
    real.mkdir()
    os.symlink(real, tmp_path / "var-run")
    path = tmp_path / "var-run" / "cacheproxy.pid"
    pidfile.claim(str(path), 8.0)
    try:
        assert (real / "cacheproxy.pid").read_text() == f"{os.getpid()}\n"
        assert pidfile.read_pid(str(path)) == os.getpid()
    finally:
        pidfile.release(str(path))
    assert not (real / "cacheproxy.pid").exists()


def test_stop_says_why_a_linked_pid_file_is_not_read(tmp_path: Path) -> None:
    """`cacheproxy stop` with a link at the pid file's path says it cannot read it, in one
    line and exit 1, and signals nothing: the pid a link leads to may be anyone's.
    Severity: low (a refusal that names the reason)."""
    target = tmp_path / "elsewhere.pid"
    target.write_text(f"{os.getpid()}\n")
    path = tmp_path / "cacheproxy.pid"
    os.symlink(target, path)
    (tmp_path / "c.toml").write_text(
        f'[proxy]\nlisten = "127.0.0.1:0"\npid_file = "{path}"\n'
        'upstream = "http://127.0.0.1:9"\n[log]\nformat = "off"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "cacheproxy", "stop", "--config", "c.toml"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)  # (a hang guard)
    assert done.returncode == 1, done.stderr
    assert f"cannot read {path}: a symbolic link" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_fifo_beside_the_pid_file_does_not_hold_up_a_stop(tmp_path: Path) -> None:
    """What was wrong: the shutdown_timeout beside the pid file (`PATH.json`) was read
    with a plain read, which waits on a FIFO until a writer comes: with one planted (or
    made by mistake) there, `cacheproxy stop` and a server's own exit hung. Now it is
    opened as the pid file is (a regular file only): the value is not taken from it, and
    the stop goes on with the config's. Severity: low (a stop that hangs)."""
    path = tmp_path / "cacheproxy.pid"
    os.mkfifo(pidfile.running_file(str(path)))
    found: list[float | None] = []
    reader = threading.Thread(
        target=lambda: found.append(pidfile.running_shutdown_timeout(str(path), 1234)),
        daemon=True)
    reader.start()
    reader.join(10)  # a hang guard: it answers at once when right
    alive = reader.is_alive()
    if alive:  # let the blocked open go, so that the thread ends
        fd = os.open(pidfile.running_file(str(path)), os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        reader.join(5)
    assert not alive and found == [None]


def test_the_local_ca_s_key_is_not_written_into_a_planted_file(tmp_path: Path) -> None:
    """What was wrong: the local CA's files were written under `.NAME.<pid>.tmp` with
    O_CREAT | O_TRUNC, following a link, and the mode (0600 for the keys) applies only to
    a file created: in a `forward.ca_dir` that others can write, a link planted there to a
    file of theirs (mode 0644) had the private key written into it, for them to read. Now
    the temporary name is removed and made anew (O_EXCL, O_NOFOLLOW), and the directory's
    lock is not taken through a link either. Severity: high where forward.ca_dir is a
    shared directory (the CA's key leaked: every intercepted site could be impersonated
    to the browsers that trust it)."""
    from cacheproxy.tls.ca import CERT_FILE, KEY_FILE, LEAF_KEY_FILE, LocalCA

    directory = tmp_path / "ca"
    directory.mkdir()
    victims = []
    for name in (KEY_FILE, CERT_FILE, LEAF_KEY_FILE):
        victim = tmp_path / f"theirs-{name}"
        victim.write_text("theirs\n")
        victim.chmod(0o644)
        os.symlink(victim, directory / f".{name}.{os.getpid()}.tmp")
        victims.append(victim)
    ca = LocalCA.load_or_create(directory)
    assert ca.created
    for victim in victims:
        assert victim.read_text() == "theirs\n"
    for name in (KEY_FILE, LEAF_KEY_FILE):
        key = directory / name
        assert not key.is_symlink() and (key.stat().st_mode & 0o777) == 0o600
        assert b"PRIVATE KEY" in key.read_bytes()
    (directory / ".lock").unlink(missing_ok=True)
    os.symlink(tmp_path / "lock-elsewhere", directory / ".lock")
    (directory / CERT_FILE).unlink()  # (not whole: the lock is taken to make it again)
    with pytest.raises(OSError):
        LocalCA.load_or_create(directory)
    assert not (tmp_path / "lock-elsewhere").exists()
