"""`lsmha-export triton`: a Triton Inference Server model repository from an export directory
(the writer: lsmha/serving/triton.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_help import CliError, HelpFormatter
from ..serving.triton import DEFAULT_NAME, KINDS, write_triton_repository
from ..serving.triton_pixels import PIXELS_SUFFIX, TO_NCHW_SUFFIX


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lsmha-export triton DIR --out REPO` to the export CLI's subparsers."""
    p = sub.add_parser(
        "triton",
        help="write a Triton Inference Server model repository from an export directory",
        description="Write a model repository that NVIDIA Triton loads unchanged: the committee as one model "
        "(onnxruntime_onnx, or tensorrt_plan when the export holds a plan) with max_batch_size, dims, "
        "dynamic_batching and instance_group.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dir", type=Path, help="an export directory (from `lsmha-export onnx`)")
    p.add_argument("--out", type=Path, required=True, help="the model repository root to write into")
    p.add_argument("--name", default=DEFAULT_NAME, help="model name (directory and config name)")
    p.add_argument("--max-batch", type=int, default=64, help="Triton max_batch_size")
    p.add_argument("--max-delay-us", type=int, default=500, help="dynamic_batching max_queue_delay_microseconds")
    p.add_argument("--instances", type=int, default=1, help="instance_group count per device")
    p.add_argument("--kind", default="auto", choices=sorted(KINDS), help="instance_group kind (plans: always gpu)")
    p.add_argument("--precision", default=None, help="committee file precision to serve (default: fp32 if present)")
    p.add_argument("--json", type=Path, default=None, help="also write what was written to this file")
    p.set_defaults(func=cmd_triton)


def cmd_triton(args: argparse.Namespace) -> int:
    try:
        model_dir = write_triton_repository(
            args.dir,
            args.out,
            name=args.name,
            max_batch=args.max_batch,
            max_delay_us=args.max_delay_us,
            instances=args.instances,
            kind=args.kind,
            precision=args.precision,
        )
    except (FileNotFoundError, ValueError) as err:
        raise CliError.usage(str(err)) from err
    # the committee, and the ensemble for UINT8 NHWC images with its preprocessing model beside it
    models = [model_dir.parent / (args.name + suffix) for suffix in ("", PIXELS_SUFFIX, TO_NCHW_SUFFIX)]
    files = sorted(p.relative_to(args.out).as_posix() for m in models for p in m.rglob("*") if p.is_file())
    print(f"wrote Triton models {', '.join(m.name for m in models)} to {model_dir.parent}:")
    for f in files:
        print(f"  {f}")
    ports = "-p 8000:8000 -p 8001:8001 -p 8002:8002"  # HTTP, gRPC, metrics
    print(f"run: docker run --gpus all --rm {ports} -v {Path(args.out).resolve()}:/models "
          "nvcr.io/nvidia/tritonserver:<ver>-py3 tritonserver --model-repository=/models")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model_dir": str(model_dir), "files": files}, indent=2) + "\n")
    return 0
