"""One `--help` formatter for every lsmha command."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions keep their line breaks (usage examples stay on their own lines), and an
    option's default is shown once: not where its help already says it, and not for required
    options, flags, or options whose default is None or empty (nothing to show). List defaults are
    written as the comma-separated text the option takes."""

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
            shown = ",".join(map(str, default)).replace("%", "%%")
            return f"{text} (default: {shown})"
        return f"{text} (default: %(default)s)"
