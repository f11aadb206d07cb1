"""`lsmha-serve DIR`: serve an exported committee (or a committee.json) over HTTP, KServe v2 protocol.

lsmha-serve exports/table6 --port 8000 --max-batch 32 --max-delay-ms 2
curl -s localhost:8000/v2/health/ready
curl -s localhost:8000/v2/models/lsmha_committee
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..cli_help import HelpFormatter
from .config import ServeConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lsmha-serve",
        description="Serve a soft committee over HTTP with the KServe v2 inference protocol "
        "(JSON or binary tensors), dynamic batching, limits and Prometheus metrics at /metrics.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "dir", type=Path, help="an export directory (manifest.json), a committee.json, or a directory with one"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port, printed at start)")
    p.add_argument("--backend", default="auto", help="engine backend: auto, onnxruntime, torch, tensorrt, ...")
    p.add_argument("--name", default=ServeConfig.name, help="model name in the URL /v2/models/NAME/infer")
    p.add_argument(
        "--max-batch", type=int, default=ServeConfig.max_batch, help="most images per executed batch and per request"
    )
    p.add_argument(
        "--max-delay-ms", type=float, default=ServeConfig.max_delay_ms, help="longest a batch waits for more requests"
    )
    p.add_argument(
        "--max-queue", type=int, default=ServeConfig.max_queue, help="most waiting requests; beyond: 503 + Retry-After"
    )
    p.add_argument(
        "--max-body-mb", type=float, default=ServeConfig.max_body_mb, help="largest request body (413 beyond)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the backend (default: its own choice)")
    p.add_argument("--no-warmup", action="store_true", help="report ready without a warm-up batch")
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="server log level"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.max_queue < 1 or args.max_delay_ms < 0 or args.max_body_mb <= 0:
        parser.error("--max-batch and --max-queue must be >= 1, --max-delay-ms >= 0, --max-body-mb > 0")
    if not args.dir.exists():
        print(f"error: {args.dir} does not exist (expected an export directory or committee.json)", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from .app import CommitteeService, create_app
    except ImportError as err:
        print(f"error: lsmha-serve needs the serve extra: pip install 'lsmha[serve]' ({err})", file=sys.stderr)
        return 1
    try:
        from ..engine import Committee, load_source

        load_source(args.dir)  # fail fast on a bad directory: hashes, paths, format
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {} if args.threads is None else {"threads": args.threads}
    config = ServeConfig(
        name=args.name,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        max_body_mb=args.max_body_mb,
        warmup=not args.no_warmup,
    )
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_failure(err: BaseException) -> None:
        failed.append(err)
        if server is not None:
            server.should_exit = True

    service = CommitteeService(lambda: Committee.load(args.dir, args.backend, **options), config, on_failure)
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    )
    server.run()
    if failed:
        print(f"error: {service.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
