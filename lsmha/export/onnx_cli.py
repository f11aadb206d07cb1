"""`lsmha-export onnx`: a committee (or one model) to ONNX opset 23 with fused Attention."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..artifacts import MANIFEST
from ..cli_help import CliError, HelpFormatter
from ..tables import format_table, write_json


def load_members(sources: list[str], num_classes: int | None = None, seed: int = 0) -> list:
    """Members from a committee.json (or its directory), .safetensors checkpoints, or the
    committee notation of `lsmha-bench latency` with random weights (latency work only):
    a model name (`lsmha.list_models()`), a paper committee (`table6`, `table6:5`), or
    `name[:field=value...]` items separated by commas."""
    import torch

    from ..artifacts import read_committee
    from ..models import CCT, committee_specs, list_models, load, parse_committee

    members = []
    for src in sources:
        path = Path(src)
        if path.is_dir() or path.suffix == ".json":
            _, checkpoints = read_committee(path)
            members += [load(p) for p in checkpoints]
        elif path.suffix == ".safetensors":
            members.append(load(path))
        else:
            try:
                specs = committee_specs(parse_committee(src), **({"num_classes": num_classes} if num_classes else {}))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"cannot read member source {src!r}: expected a committee.json (or its directory), a "
                    f".safetensors checkpoint, or members as model names among {', '.join(list_models())}, "
                    f"a paper committee (table5, table6:5, ...) or name:field=value items ({err})"
                ) from None
            for spec in specs:
                torch.manual_seed(seed + len(members))
                members.append(CCT(spec).eval())
    return members


HELP = "export a committee to ONNX (opset 23, fused Attention, one graph)"
DESCRIPTION = (
    "Write the committee as ONE ONNX graph (raw float32 pixels in, per-image standardisation inside, "
    "members + Sum; outputs logits and member_logits), optionally one graph per member, each member's "
    "weights as .safetensors, and manifest.json with sha256, opset, precision and versions."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("onnx", help=HELP, description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument(
        "sources", nargs="+",
        help="committee.json (or its dir), .safetensors files, or members with random weights: model names, "
        "a paper committee (table6:5) or name:field=value items (cct_2_3x5:heads=4)",
    )  # fmt: skip
    p.add_argument("-o", "--out", type=Path, required=True, help="export directory (created; must be empty)")
    p.add_argument(
        "--force", action="store_true",
        help="clear an earlier export in --out first (deletes only the files an export writes)",
    )  # fmt: skip
    p.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"],
        help="graphs to write; fp16 and int8 (ORT dynamic quantisation) are opt-in variants",
    )  # fmt: skip
    p.add_argument("--per-member", action="store_true", help="also write one graph per member")
    p.add_argument("--num-classes", type=int, default=None, help="classes for models built from names")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights for models built from names")
    p.add_argument("--json", type=Path, default=None, help="also write the manifest to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .onnx import export_onnx

    members = load_members(args.sources, args.num_classes, args.seed)
    try:
        manifest = export_onnx(
            members, args.out, args.precision, args.per_member, progress=not args.no_progress, force=args.force
        )
    except FileExistsError as err:
        raise CliError.usage(str(err)) from None
    except RuntimeError as err:
        raise CliError(str(err)) from None
    rows = [
        [e.path, e.format, e.precision, e.scope, e.opset, (manifest.path_of(e).stat().st_size >> 10), e.sha256[:12]]
        for e in manifest.files
    ]
    print(format_table(["file", "format", "precision", "scope", "opset", "KiB", "sha256"], rows))
    print(f"wrote {Path(manifest.directory) / MANIFEST}")
    write_json(args.json, manifest.to_dict())
    return 0
