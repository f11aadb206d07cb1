"""`lsmha-bench serve`: requests/s and p50/p99 latency of `lsmha-serve` over loopback,
against direct `Committee.predict` in-process on the same images.

The server runs as its own process (`python -m lsmha.serving.cli`), as in
production; the clients are threads of this process sending pre-encoded
KServe v2 JSON bodies, so client-side encoding costs nothing. Every answer is
checked against direct `predict` on the same images. Modes:

- `direct`: `Committee.predict` called back to back by one caller (no HTTP);
- `serve`: the server with dynamic batching (--max-batch, --max-delay-ms);
- `serve-unbatched`: the same server with batches of one request (max-batch = images per request);
- `serve-binary`: as `serve`, with images and outputs as binary tensors (the v2 binary tensor
  data extension, what tritonclient sends by default) in place of JSON numbers;
- `grpc`: as `serve`, over the server's KServe v2 gRPC endpoint (`--grpc-port`), images as raw
  contents (what tritonclient.grpc sends; serve_grpc.py).

Each mode runs at every `--images` count (default 1 and 8 images per request), and each row
says its images/s against direct predict at the same count. KServe's own ModelServer is not
measured: the line saying why is printed and kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cli_help import CliError, HelpFormatter
from ..tables import format_table, write_json


@dataclass(frozen=True)
class ServeRow:
    """One measured mode: throughput, latency percentiles, and how the server batched."""

    mode: str
    clients: int
    images_per_request: int
    requests: int
    seconds: float
    requests_per_s: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch_images: float | None = None
    multi_request_batches: int | None = None
    errors: int = 0
    mismatches: int = 0


def _row(mode: str, clients: int, per_request: int, latencies_s: list[float], seconds: float, **kw: Any) -> ServeRow:
    ms = np.asarray(latencies_s) * 1e3
    n = len(latencies_s)
    return ServeRow(
        mode, clients, per_request, n, seconds, n / seconds, n * per_request / seconds,
        float(np.percentile(ms, 50)) if n else float("nan"), float(np.percentile(ms, 99)) if n else float("nan"), **kw,
    )  # fmt: skip


def measure_direct(committee: Any, images: list[np.ndarray], requests: int, warmup: int = 5) -> ServeRow:
    """`committee.predict` called `requests` times back to back, cycling through `images`."""
    for i in range(warmup):
        committee.predict(images[i % len(images)])
    latencies = []
    start = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        committee.predict(images[i % len(images)])
        latencies.append(time.perf_counter() - t0)
    return _row("direct", 1, len(images[0]), latencies, time.perf_counter() - start)


def measure_server(
    url: str,
    name: str,
    images: list[np.ndarray],
    expected: list[np.ndarray],
    clients: int,
    requests: int,
    mode: str = "serve",
    timeout_s: float = 60.0,
    binary: bool = False,
    batching: bool = True,
) -> ServeRow:
    """`clients` threads send `requests` infer calls in all (client c sends `images[c % len]`),
    timing each; answers are compared with `expected` labels. Batching facts come from /metrics,
    counted over this run only. `binary`: images and outputs as binary tensors, not JSON."""
    import httpx

    from ..serving.protocol import HEADER_LENGTH, decode_outputs, encode_images, join_body, split_body

    bodies, headers = [], []
    for x in images:
        blobs: list[bytes] | None = [] if binary else None
        body, length = join_body(encode_images(x, ("label",), blobs=blobs), blobs or [])
        bodies.append(body)
        headers.append({"content-type": "application/json"} if length is None else {HEADER_LENGTH: str(length)})
    endpoint = f"{url}/v2/models/{name}/infer"

    def labels(r: httpx.Response) -> np.ndarray:
        head, binary = split_body(r.content, r.headers.get(HEADER_LENGTH))  # the same framing both ways
        return decode_outputs(json.loads(head), binary)["label"]

    def send(http: httpx.Client, c: int) -> httpx.Response | None:
        k = c % len(bodies)
        try:
            return http.post(endpoint, content=bodies[k], headers=headers[k])
        except httpx.HTTPError:
            return None

    def check(r: httpx.Response | None, c: int) -> tuple[bool, bool]:
        ok = r is not None and r.status_code == 200
        return ok, ok and np.array_equal(labels(r), expected[c % len(expected)])

    connect = lambda: httpx.Client(timeout=timeout_s)  # noqa: E731
    return drive_clients(url if batching else None, mode, clients, requests, len(images[0]), connect, send, check)


def drive_clients(
    url: str | None,
    mode: str,
    clients: int,
    requests: int,
    per_request: int,
    connect: Callable[[], Any],
    send: Callable[[Any, int], Any],
    check: Callable[[Any, int], tuple[bool, bool]],
) -> ServeRow:
    """`clients` threads share `requests` calls: client c opens `connect()` (a context manager)
    and times each `send(connection, c)`; `check(answer, c)` says (answered, same labels as
    direct predict). Batching facts come from the server's /metrics at `url`, this run only
    (None: a server without lsmha's metrics, e.g. KServe's ModelServer)."""
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures = {"errors": 0, "mismatches": 0}

    def client(c: int) -> None:
        with connect() as connection:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                answer = send(connection, c)
                dt = time.perf_counter() - t0
                try:
                    ok, same = check(answer, c)
                except (KeyError, TypeError, ValueError, AttributeError):  # an answer this client cannot read
                    ok = same = False
                with lock:
                    if ok:
                        latencies.append(dt)
                    failures["errors"] += not ok
                    failures["mismatches"] += ok and not same

    before = scrape_batching(url) if url else None
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if before is None:
        return _row(mode, clients, per_request, latencies, seconds, **failures)
    after = scrape_batching(url)
    batches = after["batches"] - before["batches"]
    mean_batch = (after["images"] - before["images"]) / batches if batches else None
    return _row(mode, clients, per_request, latencies, seconds, mean_batch_images=mean_batch,
                multi_request_batches=int(after["multi"] - before["multi"]), **failures)  # fmt: skip


def scrape_batching(url: str) -> dict[str, float]:
    """Executed batches, their images, and batches of more than one request, from /metrics."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text

    def value(pattern: str) -> float:
        m = re.search(rf"^{pattern} (\S+)$", text, re.M)
        if m is None:
            raise ValueError(f"/metrics has no line {pattern!r}; is {url} an lsmha-serve server?")
        return float(m.group(1))

    batches = value("lsmha_batch_requests_count")
    return {
        "batches": batches,
        "images": value("lsmha_batch_size_sum"),
        "multi": batches - value(r'lsmha_batch_requests_bucket\{le="1(?:\.0)?"\}'),  # prometheus_client: "1.0"
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    directory: Path, port: int, extra: list[str], timeout_s: float = 180.0, kserve: bool = False
) -> subprocess.Popen:
    """Start `lsmha-serve` (or, with `kserve`, KServe's ModelServer over the same committee.onnx:
    `lsmha.bench.kserve_committee`) as a child process and wait until it reports ready."""
    import httpx

    if kserve:
        cmd = [sys.executable, "-m", "lsmha.bench.kserve_committee", str(directory), "--http_port", str(port),
               "--model_name", "lsmha_committee", "--enable_grpc", "false"]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "lsmha.serving.cli", str(directory), "--port", str(port), "--log-level", "warning"]
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (the child writes it while it runs; not a pipe: a chatty server would fill one and stall)
    proc = subprocess.Popen(cmd + extra, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise TimeoutError(f"{cmd[2]} was not ready after {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


MODES = ("direct", "serve", "serve-binary", "grpc", "serve-unbatched", "kserve")


def _measure_mode(
    mode: str, port: int, grpc_port: int | None, images: list, expected: list, clients: int, requests: int
) -> ServeRow:
    """One mode's row on a running server: warm-up calls (connections, server paths), then the timed ones."""
    url = f"http://127.0.0.1:{port}"
    run = dict(name="lsmha_committee", images=images, expected=expected, clients=clients, mode=mode)
    warm = min(requests, 4 * clients)
    if mode == "grpc":
        from .serve_grpc import measure_grpc

        measure_grpc(url, f"127.0.0.1:{grpc_port}", requests=warm, **run)
        return measure_grpc(url, f"127.0.0.1:{grpc_port}", requests=requests, **run)
    run.update(binary=mode == "serve-binary", batching=mode != "kserve")  # KServe has no lsmha metrics
    measure_server(url, requests=warm, **run)
    return measure_server(url, requests=requests, **run)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="requests/s and p50/p99 latency of lsmha-serve over loopback vs direct Committee.predict",
        description=__doc__.split("\n\n")[0] + " Each answer is checked against direct predict.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dir", type=Path, help="an export directory or committee.json (what lsmha-serve serves)")
    p.add_argument("--backend", default="auto", help="engine backend for both the server and the direct calls")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    p.add_argument("--requests", type=int, default=400, help="requests per mode (all clients together)")
    p.add_argument("--images", default="1,8", help="images per request, comma-separated: each count in every mode")
    p.add_argument("--max-batch", type=int, default=32, help="server --max-batch (serve mode)")
    p.add_argument("--max-delay-ms", type=float, default=2.0, help="server --max-delay-ms (serve mode)")
    p.add_argument("--threads", type=int, default=None, help="backend CPU threads (default: the backend's choice)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and machine facts to this file")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    sizes = [int(n) for n in args.images.split(",") if n.strip().isdigit()]
    if len(sizes) != len(args.images.split(",")) or not sizes:
        raise CliError.usage(f"--images must be comma-separated counts, e.g. 1,8; got {args.images!r}")
    if bad or not modes or min(args.clients, args.requests, *sizes) < 1 or max(sizes) > args.max_batch:
        raise CliError.usage(
            f"--modes among {', '.join(MODES)} (got {bad or modes}); --clients, --requests, --images >= 1; "
            f"--images <= --max-batch"
        )
    from ..engine import Committee
    from .kserve_committee import kserve_skipped

    options = {} if args.threads is None else {"threads": args.threads}
    try:
        committee = Committee.load(args.dir, args.backend, **options)
    except (FileNotFoundError, ValueError) as err:
        raise CliError.usage(str(err)) from err
    except RuntimeError as err:  # no backend can run it here
        raise CliError.environment(str(err)) from err
    rng = np.random.default_rng(args.seed)
    work = {}  # images per request -> (each client's images, their labels by direct predict)
    for n in sizes:
        shape = (n, committee.img_size, committee.img_size, committee.in_chans)
        images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(args.clients)]
        work[n] = (images, [committee.predict(x) for x in images])
    print(
        f"lsmha-bench serve: {committee!r}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"{args.clients} clients, {args.images} image(s)/request, {args.requests} requests per mode, "
        "loopback, KServe v2 over HTTP and gRPC"
    )
    rows: list[ServeRow] = []
    if "direct" in modes:
        rows += [measure_direct(committee, work[n][0], args.requests) for n in sizes]
    committee.close()
    common = ["--backend", args.backend] + ([] if args.threads is None else ["--threads", str(args.threads)])
    servers = {
        "serve": ["--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms)],
    }
    servers["serve-binary"] = servers["grpc"] = servers["serve"]  # one server kind; the clients differ
    servers["kserve"] = []
    skipped = kserve_skipped(args.dir) if "kserve" in modes else None
    for mode in [m for m in MODES if m in modes and m != "direct" and not (m == "kserve" and skipped)]:
        # one server per mode, each count in turn; unbatched: one per count (its --max-batch is the count)
        for group in [[n] for n in sizes] if mode == "serve-unbatched" else [sizes]:
            if mode == "serve-unbatched":
                extra = ["--max-batch", str(group[0]), "--max-delay-ms", "0"]
            else:
                extra = servers[mode]
            grpc_port = free_port() if mode == "grpc" else None
            if grpc_port is not None:
                extra = [*extra, "--grpc-port", str(grpc_port)]
            port = free_port()
            try:
                proc = start_server(
                    args.dir, port, extra if mode == "kserve" else common + extra, kserve=mode == "kserve"
                )
            except (RuntimeError, TimeoutError) as err:
                raise CliError(f"the {mode} server did not start: {err}") from err
            try:
                for n in group:
                    rows.append(_measure_mode(mode, port, grpc_port, *work[n], args.clients, args.requests))
            finally:
                stop_server(proc)
    rows.sort(key=lambda r: (r.images_per_request, MODES.index(r.mode)))
    direct_rate = {r.images_per_request: r.images_per_s for r in rows if r.mode == "direct"}
    headers = ["mode", "clients", "img/req", "requests", "req/s", "images/s", "vs direct", "p50 ms", "p99 ms"]
    headers += ["mean batch", "multi-req batches", "errors", "mismatches"]
    print(
        format_table(
            headers,
            [
                [r.mode, r.clients, r.images_per_request, r.requests, r.requests_per_s, r.images_per_s]
                + [r.images_per_s / direct_rate[r.images_per_request] if r.images_per_request in direct_rate else None]
                + [r.p50_ms, r.p99_ms, r.mean_batch_images, r.multi_request_batches, r.errors, r.mismatches]
                for r in rows
            ],
        )
    )
    if skipped:
        print(skipped)
    if args.json:
        facts = {
            "committee": repr(committee),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "skipped": [skipped] if skipped else [],
            "args": {k: str(v) for k, v in vars(args).items() if k != "func"},
        }
        write_json(args.json, {"facts": facts, "rows": [asdict(r) for r in rows]})
        print(f"wrote {args.json}")
    failed = sum(r.errors + r.mismatches for r in rows)
    if failed:
        raise CliError(f"{failed} request(s) failed or disagreed with direct predict")
    return 0
