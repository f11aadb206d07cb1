"""`lsmha-serve DIR`: serve an exported committee (or a committee.json) over HTTP, KServe v2 protocol.

lsmha-serve exports/table6 --port 8000 --max-batch 32 --max-delay-ms 2
curl -s localhost:8000/v2/health/ready
curl -s localhost:8000/v2/models/lsmha_committee

SIGTERM or Ctrl-C stops it gracefully (requests in flight get --shutdown-timeout-s) and it exits 0,
also when the signal comes before the server listens or while the committee loads or warms up.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..cli_help import CliError, HelpFormatter, finish_parser, run_command
from .config import ServeConfig, default_max_connections
from .engine_options import add_engine_options, backend_options

PROG = "lsmha-serve"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a soft committee over HTTP (and gRPC, --grpc-port) with the KServe v2 inference protocol "
        "(JSON or binary tensors), dynamic batching, limits and Prometheus metrics at /metrics.",
        formatter_class=HelpFormatter,
        epilog="SIGTERM or Ctrl-C stops the server gracefully and it exits 0; see docs/serving.md.",
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
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=ServeConfig.body_timeout_s,
        help="longest a request body may take to arrive after its headers (408 and the connection closed beyond)",
    )
    p.add_argument(
        "--shutdown-timeout-s",
        type=float,
        default=ServeConfig.shutdown_timeout_s,
        help="on SIGTERM, longest to wait for requests in flight before cancelling them",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=ServeConfig.header_timeout_s,
        help="longest a connection may take to send a request's headers (from opening, or from its previous "
        "response); slower ones are closed",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="most connections open at once; beyond it the one idle longest is closed (default: the open-file "
        f"limit less 64, at most 1024: here {default_max_connections()})",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the backend (default: its own choice)")
    p.add_argument("--no-warmup", action="store_true", help="report ready without a warm-up batch")
    p.add_argument(
        "--adaptive", action="store_true",
        help="serve the calibrated adaptive committee (after lsmha-export calibrate; docs/adaptive.md): every "
        "response carries members_run, /metrics its histogram lsmha_members_run",
    )  # fmt: skip
    p.add_argument(
        "--trust-native",
        action="store_true",
        help="let --backend auto open native packages (AOTInductor .pt2, TensorRT plans), which run code on "
        "load: only for export directories you built or trust (naming --backend aoti/tensorrt also trusts them)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="OpenVINO's compiled-model cache (later starts load the compiled graph from there)",
    )
    add_engine_options(p)
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the KServe v2 gRPC protocol (inference.GRPCInferenceService) on this port (0: any free)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="server log level"
    )
    return finish_parser(p)


def serve(args: argparse.Namespace) -> int:
    try:
        config = ServeConfig(
            name=args.name,
            max_batch=args.max_batch,
            max_delay_ms=args.max_delay_ms,
            max_queue=args.max_queue,
            max_body_mb=args.max_body_mb,
            body_timeout_s=args.body_timeout_s,
            shutdown_timeout_s=args.shutdown_timeout_s,
            header_timeout_s=args.header_timeout_s,
            **({} if args.max_connections is None else {"max_connections": args.max_connections}),
            warmup=not args.no_warmup,
            adaptive=args.adaptive,
        )
    except ValueError as err:
        raise CliError.usage(str(err)) from None
    if not args.dir.exists():
        raise CliError.usage(f"{args.dir} does not exist (expected an export directory or committee.json)")
    try:
        from .app import CommitteeService
        from .server import CommitteeServer
    except ImportError as err:
        raise CliError.environment(f"{PROG} needs the serve extra: pip install 'lsmha[serve]' ({err})") from None
    from ..engine import BACKENDS, BackendUnavailable, Committee, load_source

    source = load_source(args.dir)  # fail fast on a bad directory (hashes, paths, format): a usage error
    if not 0 <= args.port <= 65535:
        raise CliError.usage(f"--port must be between 0 and 65535, got {args.port}")
    _check_port_free(args.host, args.port)
    if args.grpc_port is not None:
        _check_grpc(args)
    if args.backend != "auto" and args.backend not in BACKENDS:
        raise CliError.usage(f"unknown --backend {args.backend!r}; known: auto, {', '.join(sorted(BACKENDS))}")
    options = backend_options(args)  # before binding
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: CommitteeServer | None = None
    load_error: list[BaseException] = []

    def on_failure(err: BaseException) -> None:
        load_error.append(err)
        if server is not None:
            server.should_exit = True

    if args.adaptive:  # thresholds missing: a usage error before binding
        from ..engine.adaptive import read_calibration

        if source.manifest is None or read_calibration(source.manifest) is None:
            raise CliError.usage(
                f"--adaptive needs an export with calibrated thresholds; {args.dir} has none: run "
                f"`lsmha-export calibrate {args.dir} --dataset NAME` first"
            )

    def load() -> Committee:  # the source read above: each file is read and hashed once
        return Committee.load(source, args.backend, trust_native=args.trust_native, adaptive=args.adaptive, **options)

    service = CommitteeService(load, config, on_failure)
    server = CommitteeServer(
        service, host=args.host, port=args.port, log_level=args.log_level, grpc_port=args.grpc_port
    )
    server.run()
    if not service.ready and service.failure is None:  # a signal while loading or warming up
        print(f"{PROG}: stopped before the committee was ready (loading or warming up)", file=sys.stderr, flush=True)
        if service.loading_abandoned:
            # its thread is still inside the backend: interpreter teardown beneath it could crash,
            # and nothing is left to flush but the logs
            logging.shutdown()
            os._exit(0)
        return 0
    if service.failure is not None:
        if load_error and isinstance(load_error[0], BackendUnavailable):
            raise CliError.environment(service.failure)  # no backend here can run it
        if load_error and isinstance(load_error[0], (ValueError, TypeError)):
            raise CliError.usage(service.failure)
        raise CliError(service.failure)
    return 0


def _check_grpc(args: argparse.Namespace) -> None:
    """--grpc-port: a port, not the HTTP one, free, and grpcio installed."""
    if not 0 <= args.grpc_port <= 65535 or args.grpc_port == args.port != 0:
        raise CliError.usage(f"--grpc-port must be between 0 and 65535 and not --port, got {args.grpc_port}")
    try:
        from . import grpc_service  # noqa: F401
    except ImportError as err:
        raise CliError.environment(f"--grpc-port needs grpcio: pip install 'lsmha[serve]' ({err})") from None
    _check_port_free(args.host, args.grpc_port, "--grpc-port")


def _check_port_free(host: str, port: int, option: str = "--port") -> None:
    """Refuse a port another process listens on before the committee loads (seconds), with
    the port in the message rather than uvicorn's own line after it."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise CliError.usage(f"--host {host!r} is not an address this machine can bind: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as err:
            raise CliError.usage(
                f"cannot listen on {host}:{port}: {err.strerror} (another server there? choose another {option})"
            ) from None


class Terminated(BaseException):
    """SIGTERM before the server took over the signal (it stops gracefully once it has)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return run_command(PROG, serve, args)
    except Terminated:  # while reading the export or binding: nothing is served yet, nothing to drain
        print(f"{PROG}: stopped by SIGTERM before serving", file=sys.stderr)
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
