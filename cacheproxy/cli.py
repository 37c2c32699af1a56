"""The `cacheproxy` command: `cacheproxy serve [--config FILE] [--upstream URL] [--listen ...]`.

Mistakes the user can fix are one line on stderr and an exit status, never a traceback:
2 for a config or usage error, 1 when the server cannot run (e.g. the address is in use).
"""

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from cacheproxy.config import ConfigError, load_config

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
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    overrides = {"proxy.upstream": args.upstream, "proxy.listen": args.listen}
    try:
        config = load_config(args.config, overrides=overrides)
        # Imported only once the config is good: a mistake is reported before the server loads.
        from cacheproxy.proxy.server import run

        run(config)
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return 2
    except OSError as exc:
        _error(str(exc))
        return 1
    return 0


# --- the command --------------------------------------------------------------------------------

# Each adds one subcommand and sets its `handler`; a new command is one more function here.
_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_serve,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="An HTTP caching reverse proxy that follows RFC 9111."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed
        return exc.code if isinstance(exc.code, int) else 0
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:  # Ctrl-C is how the server is meant to stop
        return 0
