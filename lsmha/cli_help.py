"""One `--help` formatter for every lsmha command."""

from __future__ import annotations

import argparse
import errno
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions keep their line breaks (usage examples stay on their own lines), and an
    option's default is shown once: not where its help already says it, and not for required
    options, flags, or options whose default is None or empty (nothing to show). List defaults are
    written as the text the option takes: space-separated where it takes several values (nargs),
    comma-separated where it takes one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or action.required
            or default is None
            or default is False
            or default == []
            or default == ()
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        if isinstance(default, (list, tuple)):
            # an option of several values (nargs) takes them space-separated; one value takes a comma list
            sep = " " if action.nargs not in (None, argparse.OPTIONAL) else ","
            shown = sep.join(map(str, default)).replace("%", "%%")
            return f"{text} (default: {shown})"
        return f"{text} (default: %(default)s)"


# One exit-code table for every lsmha command (printed at the end of each `--help`).
EXIT_OK = 0
EXIT_FAILURE = 1  # the work ran and failed: a check that did not pass, an interrupted run
EXIT_USAGE = 2  # bad usage: unknown option, bad value, a file that is not what was expected
EXIT_ENVIRONMENT = 3  # this machine cannot do it: a missing package, device or backend

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # this machine's disk, not the work: exit 3

EXIT_CODES_HELP = (
    "exit status: 0 ok, 1 failure (a check did not pass, interrupted), "
    "2 bad usage (bad option, value or input file), 3 environment (missing package, device or backend)"
)


class CliError(Exception):
    """An error a command reports as one line on stderr, with its exit status.

    Raise `CliError.usage(...)` for bad input, `CliError.environment(...)` for what this
    machine lacks, `CliError(...)` for a failure; `run_command` prints it and returns its code.
    """

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def usage(cls, message: str) -> CliError:
        return cls(message, EXIT_USAGE)

    @classmethod
    def environment(cls, message: str) -> CliError:
        return cls(message, EXIT_ENVIRONMENT)


def run_command(prog: str, handler, args: argparse.Namespace, interrupted_hint: str = "") -> int:
    """Run `handler(args)` and map its errors onto the exit-code table, one line on stderr each.

    `CliError` keeps its code; `ValueError`, `FileNotFoundError`, `IsADirectoryError` and
    `TypeError` raised on bad input are usage errors (2), unless the exception carries its own
    `exit_code` (a data set that is not installed: 3); `ImportError` is an environment
    error (3); an `OSError` writing files is one line naming the path and the cause, 3 for a full
    disk or a read-only file system, else 1; Ctrl-C is a failure (1), with `interrupted_hint`
    (e.g. how to resume)."""
    try:
        return int(handler(args) or EXIT_OK)
    except CliError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.code
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, TypeError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_USAGE)  # a data set not installed says 3 itself
    except ImportError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as err:  # a full disk, a read-only directory, a file that cannot be written
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_ENVIRONMENT if err.errno in _DISK_ERRNOS else EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted{'; ' + interrupted_hint if interrupted_hint else ''}", file=sys.stderr)
        return EXIT_FAILURE


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, except that unrecognised arguments after a subcommand are
    reported by that subcommand's parser, with its usage (`lsmha-train run ...`), not the
    top-level one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        chosen = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(args, action.dest, None), parser)
        chosen.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every subcommand's parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # an alias names the same parser again
                found += subparsers(sub)
    return found


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The last step of every lsmha command's `build_parser`: the exit-code table at the end of each
    `--help`, and no abbreviated options on the parser or any subcommand's (argparse would take
    `--epoch 2` for `--epochs 2`; a typo must be an error, not another option)."""
    for p in subparsers(parser):
        p.allow_abbrev = False
    return add_exit_codes(parser)


def add_exit_codes(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append the exit-code table to `parser`'s help epilog (and to each of its subparsers')."""
    parser.epilog = f"{parser.epilog}\n\n{EXIT_CODES_HELP}" if parser.epilog else EXIT_CODES_HELP
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_exit_codes(sub)
    return parser
