"""The `cacheproxy` command: `cacheproxy serve [--config FILE] [--upstream URL] [--listen ...]
[--workers N|auto] [--log-file FILE]`, `cacheproxy demo [--listen ...]`,
`cacheproxy reload|stop [--config FILE]` (the process named by proxy.pid_file),
`cacheproxy logs [FILE|-] [filters] [--json] [--follow]` and `cacheproxy ca [--config FILE]`
(the local CA of forward.intercept_tls).

Mistakes the user can fix are one line on stderr and an exit status, never a traceback:
2 for a config or usage error, 1 when the server cannot run (e.g. the address is in use).
"""

import argparse
import logging
import os
import signal
import stat
import sys
import time
import zlib
from collections.abc import Callable
from difflib import get_close_matches
from importlib.metadata import PackageNotFoundError, version
from typing import IO

from cacheproxy import pidfile
from cacheproxy.config import DEFAULT_PATH, Config, ConfigError, load_config, parse_listen
from cacheproxy.config.env_shadows import warnings as env_warnings
from cacheproxy.lifetime import StartError
from cacheproxy.observe.logread import (
    Progress,
    View,
    compressed,
    follow,
    open_log,
    read_to_end,
)
from cacheproxy.observe.summary import Summary, make_filter
from cacheproxy.stdio import reopen_closed_standard_streams

PROG = "cacheproxy"

Handler = Callable[[argparse.Namespace], int]


def _package_version() -> str:
    try:
        return version("cacheproxy")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _error(message: str) -> None:
    # Exactly one line: a reason carrying a newline (a TOML parser message, a path) is folded.
    print(f"{PROG}: {' '.join(message.splitlines())}", file=sys.stderr)


# --- serve --------------------------------------------------------------------------------------


def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the caching proxy",
        description="Run the caching proxy until interrupted. Settings come from the flags, "
        "then CACHEPROXY_<SECTION>_<KEY> environment variables, then the config file.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file (default: config/cacheproxy.toml if it exists)",
    )
    parser.add_argument(
        "--upstream", metavar="URL", help="origin URL, e.g. http://127.0.0.1:3000 (proxy.upstream)"
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (proxy.listen)")
    parser.add_argument("--workers", metavar="N",
                        help="processes sharing the port, for several cores; auto: one per "
                        "usable core (proxy.workers)")
    parser.add_argument("--log-file", metavar="FILE",
                        help="write the request log to FILE instead of stdout (log.path)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    overrides = {"proxy.upstream": args.upstream, "proxy.listen": args.listen,
                 "proxy.workers": args.workers, "log.path": args.log_file}

    def serve() -> None:
        # The file the start reads is the one every reload reads ("the same file"):
        # ./config/cacheproxy.toml gone at a reload (moved aside while edited) is refused
        # naming it, as nginx refuses a file it cannot read, not the defaults applied.
        source = args.config if args.config is not None \
            else DEFAULT_PATH if DEFAULT_PATH.is_file() else None
        config = load_config(source, overrides=overrides)
        flagged = {key for key, value in overrides.items() if value is not None}
        for line in env_warnings(source, os.environ, flagged):  # (a flag wins over both)
            _error(line)
        if "stdout" in getattr(args, "closed_streams", ()) and not config.log.path \
                and config.log.format != "off":
            _error("warning: standard output was closed: the request log goes to /dev/null; "
                   "set log.path (--log-file) to keep it")
        # Imported only once the config is good: a mistake is reported before the server loads.
        from cacheproxy.proxy.server import run

        said_by = os.getpid()

        def reload() -> Config:
            # SIGHUP reads the same sources again: the file, the environment, these flags.
            new = load_config(source, overrides=overrides)
            # An edit that changes nothing, said once: with --workers by the parent, which
            # reloads first to check the file (workers.py), not again by each worker.
            if os.getpid() == said_by:
                for line in env_warnings(source, os.environ, flagged):
                    logging.getLogger(PROG).warning("reload: %s",
                                                    line.removeprefix("warning: "))
            return new

        run(config, reload=reload)

    return _run_server(serve)


def _run_server(run: Callable[[], None]) -> int:
    """Run a server until it stops: 0; a config mistake: 2; an OSError (a port in use): 1.
    Each mistake is one line on stderr."""
    try:
        run()
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return 2
    except StartError as exc:  # names the setting, its address and the cause
        _error(str(exc))
        return 1
    except OSError as exc:
        _error(str(exc))
        return 1
    return 0


# --- demo ---------------------------------------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="run only the bundled demo origin",
        description="Run the bundled demo origin (the one `serve` starts when no upstream is "
        "given) on its own, e.g. as a compose service in front of which proxies run.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: config/cacheproxy.toml if it exists)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (demo.listen)")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    def demo() -> None:
        config = load_config(args.config, overrides={"demo.listen": args.listen})
        from cacheproxy.demo.origin import run_demo_origin

        run_demo_origin(config.demo)

    return _run_server(demo)


# --- reload and stop -----------------------------------------------------------------------------

STOP_GRACE = 5.0  # seconds `stop` waits beyond proxy.shutdown_timeout before giving up


def _add_control(commands: argparse._SubParsersAction) -> None:
    for name, what in (("reload", "reload the running server's configuration (SIGHUP)"),
                       ("stop", "stop the running server gracefully (SIGTERM) and wait")):
        parser = commands.add_parser(
            name, help=what,
            description=f"{what[0].upper()}{what[1:]}: the server is the process named in "
            "proxy.pid_file, read from the same config file and CACHEPROXY_* environment "
            "serve was given" + (
                "; the configuration is checked first, so a mistake is reported here and the "
                "server keeps running the one it has." if name == "reload" else
                "; it returns once that process has exited."))
        parser.add_argument("--config", metavar="FILE",
                            help="TOML config file (default: config/cacheproxy.toml if it exists)")
        parser.set_defaults(handler=_control, signal=name)


def _control(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)  # reload: the new config is checked before SIGHUP
        if args.signal == "reload":
            for line in env_warnings(args.config, os.environ):
                _error(line)
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return 2
    try:
        pid = pidfile.running_server(config.proxy.pid_file)
        if args.signal == "reload":
            pidfile.send(pid, signal.SIGHUP)
            print(f"{PROG}: reload: sent SIGHUP to pid {pid}; its log says "
                  "\"configuration reloaded\" (or why it refused)")
            return 0
        # The server drains for the shutdown_timeout it started with (restart-only), which
        # the file now read may have changed; its own pid file says which.
        running = pidfile.running_shutdown_timeout(config.proxy.pid_file, pid)
        pidfile.send(pid, signal.SIGTERM)
        seconds = (config.proxy.shutdown_timeout if running is None else running) + STOP_GRACE
        if not pidfile.wait_gone(pid, seconds):
            _error(f"stop: pid {pid} is still running {seconds:g} s after SIGTERM")
            return 1
    except pidfile.ControlError as exc:
        _error(f"{args.signal}: {exc}")
        return 1
    print(f"{PROG}: stop: pid {pid} has exited")
    return 0


# --- logs ---------------------------------------------------------------------------------------

MAX_TOP = 1000                # well inside the sketches' 10 000 counters

_LOGS_EPILOG = """\
--status VALUE: three digits or a class (200, 404, 5xx) is the HTTP status sent to the
client; a word is the cache status (HIT, MISS, EXPIRED, STALE, REVALIDATED, UPDATING,
BYPASS, ERROR, DENIED, TUNNEL; any case). Repeat it or separate values with commas: values of one
kind are alternatives, and when both kinds are given a request must match both
(--status 5xx --status miss,expired: misses that ended in a 5xx).

--since / --until: ISO 8601 (2026-11-23T17:00:00Z; 2026-11-23 is that day's midnight; no
offset means UTC) or a duration ago (30s, 15m, 2h, 1d, 1w). since <= time < until.

Hits are HIT, STALE, REVALIDATED and UPDATING (answered from storage); misses are MISS and
EXPIRED. Bytes saved are the bytes served from storage. Latency percentiles are within 1 %;
top URLs come from a bounded sketch whose possible undercount --json reports (0 = exact).
--follow reads FILE from the start, then as it grows, reopening it when it is rotated or
truncated (like tail -F); it redraws every second, or, when stdout is not a terminal,
prints a report each second something was added (with --json, one object per line).
Ctrl-C ends it.
"""


def _add_logs(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "logs",
        help="summarise a request log",
        description="Summarise a request log (JSON Lines or text, mixed is fine): hit ratios,\n"
        "cache statuses, latency percentiles, top URLs by misses and by bytes from the\n"
        "origin, bytes saved. Malformed lines are counted and skipped.",
        epilog=_LOGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="the log file; - or none reads stdin")
    parser.add_argument("--since", metavar="TIME", help="only requests at or after TIME")
    parser.add_argument("--until", metavar="TIME", help="only requests before TIME")
    parser.add_argument("--host", help="only requests for this Host (exact, any case)")
    parser.add_argument("--path", metavar="PREFIX", help="only paths starting with PREFIX")
    parser.add_argument("--status", action="append", metavar="VALUE",
                        help="only this HTTP or cache status (see below; repeatable)")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="how many top URLs to list (default 10)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--follow", action="store_true",
                        help="keep reading as the file grows and show a live view")
    parser.set_defaults(handler=_logs)


def _logs(args: argparse.Namespace) -> int:
    if not 1 <= args.top <= MAX_TOP:
        _error(f"logs: --top must be between 1 and {MAX_TOP}")
        return 2
    try:
        keep = make_filter(since=args.since, until=args.until, host=args.host, path=args.path,
                           status=args.status, now=time.time())
    except ValueError as exc:
        _error(f"logs: {exc}")
        return 2
    if args.file is None:
        if sys.stdin.isatty():  # rather than wait silently for typed log lines
            _error("logs: no FILE given and stdin is a terminal (name a log file, or - for stdin)")
            return 2
        args.file = "-"
    try:
        source = open_log(args.file)
    except OSError as exc:
        _error(f"logs: cannot open {args.file}: {exc.strerror or exc}")
        return 2
    if args.follow and compressed(source):
        source.close()
        _error(f"logs: {args.file} is gzip-compressed: it does not grow; leave out --follow")
        return 2
    summary = Summary(keep)
    view = View(args, sys.stdout)
    progress = Progress("stdin" if args.file == "-" else args.file, _size(source), sys.stderr)
    try:
        if args.follow:
            follow(source, summary, view)
        else:
            read_to_end(source, summary, progress)
            progress.close()
            view.show(summary)
    except KeyboardInterrupt:  # how --follow is meant to end
        pass
    except BrokenPipeError:  # `cacheproxy logs ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:  # gzip.BadGzipFile too
        _error(f"logs: cannot read {args.file}: {exc.strerror or exc}")
        return 1
    except (EOFError, zlib.error) as exc:  # a .gz cut short (still being compressed?)
        _error(f"logs: cannot read {args.file}: damaged gzip data: {exc}")
        return 1
    finally:
        progress.close()
        source.close()
    return 0


def _size(source: IO[bytes]) -> int | None:
    """A regular file's size (for the progress line's share and time left), else None
    (also for a compressed one: what is read is more than its size)."""
    if compressed(source):
        return None
    st = os.fstat(source.fileno())
    return st.st_size if stat.S_ISREG(st.st_mode) else None


# --- ca -----------------------------------------------------------------------------------------


def _add_ca(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ca",
        help="create (if missing) and show the local CA of forward.intercept_tls",
        description="Create the local certificate authority in forward.ca_dir if it is not "
        "there yet, then print its certificate's path, SHA-256 fingerprint and SPKI hash "
        "(what Chromium's --ignore-certificate-errors-spki-list takes), and how to make a "
        "browser trust it.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: config/cacheproxy.toml if it exists)")
    parser.set_defaults(handler=_ca)


def _ca(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return 2
    # Imported here: cryptography loads only for the command that needs it.
    from cacheproxy.tls.ca import CAError, LocalCA, fingerprint_sha256, spki_sha256

    try:
        ca = LocalCA.load_or_create(config.forward.ca_path(os.environ))
    except CAError as exc:
        _error(f"ca: {exc}")
        return 1
    except OSError as exc:
        _error(f"ca: {exc.filename or config.forward.ca_dir}: {exc.strerror or exc}")
        return 1
    spki = spki_sha256(ca.certificate)
    print(f"certificate: {ca.cert_path}{' (created now)' if ca.created else ''}")
    print(f"SHA-256 fingerprint: {fingerprint_sha256(ca.certificate)}")
    print(f"SPKI hash: {spki}")
    print("trust it: import the certificate as an authority in the browser's certificate "
          "settings, or start Chromium with "
          f"--ignore-certificate-errors-spki-list={spki} (and a --user-data-dir)")
    return 0


# --- health -------------------------------------------------------------------------------------


def _add_health(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "health",
        help="check that the server on this configuration's address answers (HEALTHCHECK)",
        description="Ask healthz where the configuration (the file and CACHEPROXY_* "
        "environment serve reads) puts it: admin.listen when set, else proxy.listen, under "
        "admin.prefix; a wildcard address is asked on loopback, never through an HTTP "
        "proxy. Exit 0 when it answers 200, else 1. The container image's HEALTHCHECK.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: config/cacheproxy.toml if it exists)")
    parser.add_argument("--demo", action="store_true",
                        help="check the demo origin (demo.listen) instead")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="the --listen given to serve (proxy.listen), or with --demo to "
                        "demo (demo.listen); admin.listen, when set, still wins for serve")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                        help="how long to wait for the answer (default 2)")
    parser.set_defaults(handler=_health)


def _health(args: argparse.Namespace) -> int:
    from cacheproxy.observe.liveness_probe import describe, healthz_target, probe

    if not 0 < args.timeout < 3600:
        _error("health: --timeout must be a number of seconds above 0")
        return 2
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            _error(f"health: --listen: {exc}")
            return 2
    # Past the flags, exit 0 or 1 only: Docker reserves a HEALTHCHECK's exit status 2.
    note = ""
    # A --listen given to serve or demo is known only to that process: given here too, it
    # is the address asked, as there it is the address listened on (a flag wins over both).
    overrides = {"demo.listen" if args.demo else "proxy.listen": args.listen}
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        # A file a reload refused leaves the server running the config it has: a mistake in
        # the file must not make it "unhealthy" (an orchestrator would restart it into the
        # mistake). Asked where the environment alone puts it, and said.
        note = f" (config error: {exc}; asked where the environment alone says)"
        try:
            config = load_config(os.devnull, overrides=overrides)
        except ConfigError:
            _error(f"health: config error: {exc}")
            return 1
    try:
        target = healthz_target(config, demo=args.demo)
    except ValueError as exc:
        _error(f"health: {exc}")
        return 1
    problem = probe(*target, timeout=args.timeout)
    if problem is not None:
        _error(f"health: {describe(*target)}: {problem}{note}")
        return 1
    print(f"{PROG}: health: {describe(*target)}: 200{note}")
    return 0


# Each adds one subcommand and sets its `handler`; a new command is one more function here.
_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_serve, _add_demo, _add_control, _add_logs, _add_ca, _add_health)


# What scripts test; every failure is also one line on stderr saying why.
_EXIT_STATUS = """\
exit status:
  0  success; serve and demo: stopped by SIGTERM or SIGINT (Ctrl-C)
  1  serve/demo cannot run (an address in use, a pid file or log file it cannot
     write, workers that keep dying); reload/stop: no running server to signal, or
     stop: still running after proxy.shutdown_timeout + 5 s; logs: cannot read the
     file; ca: the CA cannot be made or read; health: no 200 from healthz, or no
     address to ask (a config mistake too: Docker reserves a HEALTHCHECK's 2)
  2  a mistake in the command line or the configuration (the line names the flag, key
     or environment variable); logs: a bad filter, or a file that cannot be opened
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="An HTTP caching reverse proxy that follows RFC 9111.",
        epilog=_EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)
    for command in commands.choices.values():  # whose usage a mistake in its flags shows
        command.set_defaults(command_parser=command)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments; an unknown one is refused by the subcommand it was given to, with that
    command's usage and the closest flag it has (argparse's parent would show its own usage,
    `cacheproxy [-h] [--version] COMMAND ...`, which lists no flag of `serve`)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command: argparse.ArgumentParser = getattr(args, "command_parser", parser)
        flags = [flag for action in command._actions for flag in action.option_strings]
        close = get_close_matches(extra[0].partition("=")[0], flags, n=1)
        command.error(f"unrecognized arguments: {' '.join(extra)}"
                      + (f" (did you mean {close[0]}?)" if close else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    closed = reopen_closed_standard_streams()
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed
        return exc.code if isinstance(exc.code, int) else 0
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    args.closed_streams = closed
    try:
        return handler(args)
    except KeyboardInterrupt:  # Ctrl-C is how the server is meant to stop
        return 0
