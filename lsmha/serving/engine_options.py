"""lsmha-serve's engine options: the flags that become `Committee.load` options, and their
check against the chosen backend before anything binds or loads. An option the backend
(or, for `--backend auto`, every backend auto may open) does not take is a usage error that
names the flag and what that backend takes; so is a value it does not accept."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli_help import CliError

# flag -> the backend option it sets (the backends' typed Options, lsmha/engine/backends)
FLAGS = {"--threads": "threads", "--cache-dir": "cache_dir", "--precision": "precision", "--mode": "mode"}


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The engine flags lsmha-serve did not have before --threads and --cache-dir."""
    p.add_argument(
        "--precision",
        default=None,
        help="the backend's precision (default: its own): onnxruntime fp32 or the export's variants, openvino "
        "auto/fp32/bf16, tensorrt the plan's, torch fp32",
    )
    p.add_argument(
        "--mode",
        default=None,
        help="OpenVINO's graph: auto (latency below 8 images a call, throughput from there), latency or throughput",
    )


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, checked against `args.backend` (CliError.usage)."""
    from ..engine import BACKENDS, auto_order, check_options

    options = {key: getattr(args, key) for key in FLAGS.values() if getattr(args, key) is not None}
    if "cache_dir" in options:
        options["cache_dir"] = str(options["cache_dir"])
    names = [n for n in auto_order() if n in BACKENDS] if args.backend == "auto" else [args.backend]
    takes = set().union(*(BACKENDS[n].options() for n in names))
    flags = {option: flag for flag, option in FLAGS.items()}
    backend = f"--backend {args.backend}" + (f" ({', '.join(names)})" if args.backend == "auto" else "")
    for option in options:
        if option not in takes:
            offered = sorted(flags[o] for o in takes if o in flags)
            raise CliError.usage(f"{flags[option]} is not an option of {backend}; it takes {', '.join(offered)}")
    try:
        check_options(options, names)
    except ValueError as err:
        given = ", ".join(f"{flags[k]} {v}" for k, v in options.items())
        raise CliError.usage(f"{given}: {err}") from None
    return options
