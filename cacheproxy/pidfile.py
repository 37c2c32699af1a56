"""proxy.pid_file: the running server's process id in a file, so that `cacheproxy reload`
and `cacheproxy stop` signal that one process (as `nginx -s reload` does) rather than every
process a `pgrep` pattern happens to match.

`serve` writes the file at start (with --workers, the supervising parent's pid: it passes
SIGHUP and SIGTERM on) and removes it at exit, unless another process has taken it over.

Beside it, `<pid_file>.json` says how long that server drains at a stop: its
`proxy.shutdown_timeout` is a restart-only setting, so the config file `stop` reads may hold
a value the running server does not use. The pid file itself stays a bare pid, which
`kill $(cat ...)`, systemd's PIDFile= and monitoring tools read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import signal
import stat
import time
from pathlib import Path

from cacheproxy.lifetime import StartError

KEY = "proxy.pid_file"


class ControlError(Exception):
    """`reload` or `stop` cannot signal the server; the message says why in one line."""


def read_pid(path: str) -> int | None:
    """The pid the file holds, or None when there is no file or no number in it. Any other
    failure to read it (a directory, no permission) is an OSError, said by the caller."""
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with open(fd, "rb") as file:
        text = file.read(64).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_running(pid: int) -> bool:
    """Is there a live process (not a zombie waiting for its parent) with this pid?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:  # "pid (comm) STATE ..."
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc: trust kill()
        return True


def _is_cacheproxy(pid: int) -> bool:
    """Is this running pid a `cacheproxy serve`? A stale file's pid may belong to anything
    now, also to a program whose command line merely mentions cacheproxy (`tail -f
    cacheproxy.log`, `vim cacheproxy.toml`, `cacheproxy logs --follow`): never take those
    for the server, whose SIGTERM or SIGHUP would end them."""
    if not is_running(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:  # no /proc (not Linux), or not ours to read: assume it is
        return True
    return serves(argv)


def serves(argv: list[bytes]) -> bool:
    """Is this the command line of `cacheproxy serve`: the installed script
    (`.../python .../bin/cacheproxy serve`) or `python [options] -m cacheproxy serve`, the
    subcommand right after the program (the only options before it are --help and
    --version)?"""
    for i, arg in enumerate(argv):
        if arg == b"-m" and argv[i + 1:i + 2] == [b"cacheproxy"]:
            after = i + 2
        elif arg == b"-mcacheproxy" or os.path.basename(arg) == b"cacheproxy":
            after = i + 1
        else:
            continue
        if argv[after:after + 1] == [b"serve"]:
            return True
    return False


def running_file(path: str) -> str:
    """The file beside the pid file that says what `stop` needs of the running server."""
    return f"{path}.json"


def claim(path: str, shutdown_timeout: float) -> None:
    """Write this process's pid to `path` (atomically: a reader never sees half a number),
    and its shutdown_timeout beside it. A file naming another running cacheproxy is a
    StartError: two servers, one pid file.

    Two servers started at the same moment with one pid file must not both read it free and
    both write it (both would run, the file naming one): the read and the write are one
    step, under an exclusive flock of the file at the path (created empty when there is
    none, _locked). The second to get the lock waits until the first has written its pid,
    then reads it."""
    try:
        held = _locked(path, create=True, wait=_CLAIM_WAIT)
    except OSError as exc:
        raise StartError(f"{KEY}: cannot write {path}: {_reason(exc)}") from None
    if held is None:  # (signals are held meanwhile: an unbounded wait was no Ctrl-C's)
        raise StartError(f"{KEY}: {path} is locked by another process (pid {_locker(path)}) "
                         f"for more than {_CLAIM_WAIT:g} s; a start or stop holds it for "
                         "a moment only: end that process, or give this one another pid_file")
    try:
        try:
            other = read_pid(path)
        except OSError as exc:
            raise StartError(f"{KEY}: cannot read {path}: {_reason(exc)}") from None
        if other is not None and other != os.getpid() and _is_cacheproxy(other):
            raise StartError(f"{KEY}: {path} names pid {other}, a cacheproxy that is "
                             "running; stop it first (cacheproxy stop) or give this one "
                             "another pid_file")
        running = json.dumps({"pid": os.getpid(), "shutdown_timeout": shutdown_timeout})
        _write(running_file(path), f"{running}\n")  # first: a stop reading the pid finds it
        _write(path, f"{os.getpid()}\n")
    finally:
        os.close(held)  # (and the lock with it)


def _locked(path: str, create: bool, wait: float | None = None) -> int | None:
    """A descriptor of the file at path, under an exclusive flock; None when there is none
    (and create is false), or when wait seconds passed without the lock (None: no bound).
    The lock counts only while its file is the one at the path: a claim replaces the file
    (_write) and a release removes it, so a lock taken on the file as found may be on one
    no longer there, and a start that locked it would race a start that locked the new
    one (both reading it free). Such a lock is let go and taken again on the file at the
    path."""
    flags = os.O_RDONLY | (os.O_CREAT if create else 0)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        try:
            fd = _open_regular(path, flags)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            if not _flock(fd, deadline):
                os.close(fd)
                return None
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # replaced or removed while it waited: lock the file there now


def _open_regular(path: str, flags: int) -> int:
    """os.open, refusing anything but a regular file: opened without O_NONBLOCK, a FIFO
    at the path blocks until a writer comes (a serve, stop or reload that never returns).
    Nor a symbolic link (O_NOFOLLOW): `serve` often runs as root with its pid file in a
    directory others can write (/tmp), where a link planted at the path would have the
    claim create or lock a file anywhere (CWE-59)."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise OSError(errno.ELOOP, "a symbolic link: give the path of the file "
                                       "itself") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(0, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def _locker(path: str) -> str:
    """Who holds the flock of the file at path, as /proc/locks says it ("unknown" if not)."""
    try:
        at = os.stat(path)
        place = f"{os.major(at.st_dev):02x}:{os.minor(at.st_dev):02x}:{at.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:  # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" \
                        and fields[5] == place:
                    return fields[4]
    except OSError:
        pass
    return "unknown"


def _flock(fd: int, deadline: float | None) -> bool:
    """Lock fd exclusively, waiting until deadline (time.monotonic(); None: for as long
    as it takes); whether it was locked."""
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


# How long a start waits for another claim or release to let go of the pid file (each holds
# it for a moment): past that, the holder is no cacheproxy start or stop, and is said.
_CLAIM_WAIT = 5.0

# How long a stopping server waits for a start's claim to let go of the pid file (a claim
# holds it for a read and a write): never held up at exit by a start that hangs.
_RELEASE_WAIT = 2.0


def _write(path: str, text: str) -> None:
    """Write text to path whole, through a file of this process's own beside it. That name
    is known in advance (the pid), so whatever stands there is removed, not written
    through, and the file made anew (O_EXCL, O_NOFOLLOW): a link planted there by another
    user would otherwise have a root `serve` overwrite its target (CWE-59, CWE-377)."""
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)  # (a stale one of a process with this pid, or a plant)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with open(fd, "w", encoding="ascii") as file:
            file.write(text)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise StartError(f"{KEY}: cannot write {path}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def release(path: str) -> None:
    """Remove the file at exit if it still names this process: under the claim's lock
    (_locked), so that a start holding it does not find the file gone, and another then
    create and lock a new one beside it."""
    try:
        held = _locked(path, create=False, wait=_RELEASE_WAIT)
    except OSError:
        held = None  # (not ours to lock, or not to be had: removed as before if it names us)
    try:
        try:
            ours = read_pid(path) == os.getpid()
        except OSError:  # (replaced meanwhile by what is no pid file: not ours to remove)
            ours = False
        if ours:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if running_shutdown_timeout(path, os.getpid()) is not None:
            with contextlib.suppress(OSError):
                os.unlink(running_file(path))
    finally:
        if held is not None:
            os.close(held)


def running_shutdown_timeout(path: str, pid: int) -> float | None:
    """The shutdown_timeout the server `pid` started with, or None when the file beside
    `path` is missing, unreadable, or another process's (a server of an older version, or
    one that did not exit cleanly)."""
    try:  # (as the pid file: no FIFO to wait on at a stop, no link followed)
        with open(_open_regular(running_file(path), os.O_RDONLY), "rb") as file:
            said = json.loads(file.read(4096).decode("ascii"))
    except (OSError, ValueError):
        return None
    if not isinstance(said, dict) or said.get("pid") != pid:
        return None
    seconds = said.get("shutdown_timeout")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not 0 <= seconds < math.inf:  # (json reads Infinity and NaN too)
        return None
    return float(seconds)


def running_server(path: str) -> int:
    """The pid of the server that `path` names, or ControlError saying why there is none."""
    if not path:
        raise ControlError(f"{KEY} is not set, so serve wrote no pid file; set it (in the "
                           "config file or CACHEPROXY_PROXY_PID_FILE) for serve and for this "
                           "command")
    if not Path(path).exists():
        raise ControlError(f"{KEY}: {path} does not exist: is cacheproxy serve running with "
                           "this configuration?")
    try:
        pid = read_pid(path)
    except OSError as exc:
        raise ControlError(f"{KEY}: cannot read {path}: {_reason(exc)}") from None
    if pid is None:
        raise ControlError(f"{KEY}: {path} holds no process id")
    if not is_running(pid):
        raise ControlError(f"{KEY}: {path} names pid {pid}, which is not running (the file "
                           "is stale: the server did not exit cleanly)")
    # A stale file's pid may have been given to another program since: never signal that
    # (SIGHUP's and SIGTERM's default action ends it), as claim() never takes it for ours.
    if not _is_cacheproxy(pid):
        raise ControlError(f"{KEY}: {path} names pid {pid}, which is not a cacheproxy (the "
                           "file is stale: the server did not exit cleanly, and the pid "
                           "was reused)")
    return pid


def send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise ControlError(f"pid {pid} exited before it could be sent {sig.name}") from None
    except PermissionError:
        raise ControlError(f"not allowed to signal pid {pid} (it runs as another user: "
                           "run this command as that user)") from None


def wait_gone(pid: int, seconds: float) -> bool:
    """Wait until pid has exited; False if it still runs after `seconds`."""
    deadline = time.monotonic() + seconds
    while is_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
