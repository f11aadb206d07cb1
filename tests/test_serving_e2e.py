"""The real server (uvicorn on a free loopback port) and the Triton repository, on a tiny
two-member committee (dim 32) exported to ONNX once per session (conftest)."""

import argparse
import concurrent.futures
import importlib.util
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from lsmha.engine import Committee
from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig
from lsmha.serving.protocol import decode_outputs, encode_images, join_body

NAME = "lsmha_committee"


@pytest.fixture(scope="module")
def export_dir(serving_export):
    return serving_export


@pytest.fixture(scope="module")
def committee(export_dir):
    c = Committee.load(export_dir, "onnxruntime")
    yield c
    c.close()


class Server(BackgroundServer):
    def infer(self, body, name=NAME, **kw) -> httpx.Response:
        if isinstance(body, (bytes, str)):
            return httpx.post(f"{self.url}/v2/models/{name}/infer", content=body, timeout=30, **kw)
        return httpx.post(f"{self.url}/v2/models/{name}/infer", json=body, timeout=30, **kw)


@pytest.fixture(scope="module")
def server(export_dir):
    config = ServeConfig(max_batch=8, max_delay_ms=100, max_queue=64, max_body_mb=0.5)
    with Server(CommitteeService(lambda: Committee.load(export_dir, "onnxruntime"), config)) as s:
        s.wait_ready()
        yield s


def _images(rng, n, fp32):
    pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return pixels.transpose(0, 3, 1, 2).astype(np.float32) * 0.5 if fp32 else pixels


def test_concurrent_clients_get_exactly_committee_predict(server, committee):
    clients, per_client = 6, 4
    barrier = threading.Barrier(clients)

    def client(c):
        rng = np.random.default_rng(100 + c)
        barrier.wait(timeout=30)  # every client's first request arrives together
        answers = []
        with httpx.Client(timeout=30) as http:
            for k in range(per_client):
                x = _images(rng, 1 + (c + k) % 3, fp32=(c + k) % 2 == 1)
                outputs = ("logits", "label", "member_logits") if c % 3 == 0 else None
                r = http.post(f"{server.url}/v2/models/{NAME}/infer", json=encode_images(x, outputs, f"{c}-{k}"))
                assert r.status_code == 200, r.text
                answers.append((x, r.json()))
        return answers

    before = server.service.batcher.stats.multi_request_batches
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(client, c) for c in range(clients)]]
    assert sum(len(r) for r in results) == clients * per_client
    for c, answers in enumerate(results):
        for k, (x, body) in enumerate(answers):
            assert body["id"] == f"{c}-{k}" and body["model_name"] == NAME
            out = decode_outputs(body)
            assert np.array_equal(out["label"], committee.predict(x))
            np.testing.assert_allclose(out["logits"], committee.predict_logits(x), rtol=1e-5, atol=1e-5)
            if c % 3 == 0:
                members = committee.member_logits(x).transpose(1, 0, 2)
                np.testing.assert_allclose(out["member_logits"], members, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(out["member_logits"].sum(1), out["logits"], rtol=1e-5, atol=1e-5)
            else:
                assert set(out) == {"logits", "label"}
    assert server.service.batcher.stats.multi_request_batches > before  # requests were merged
    metrics = httpx.get(f"{server.url}/metrics").text
    count = float(_sample(metrics, "lsmha_batch_requests_count"))
    single = float(_sample(metrics, 'lsmha_batch_requests_bucket{le="1.0"}'))
    assert count - single >= 1, "no executed batch held more than one request"
    assert float(_sample(metrics, "lsmha_batch_size_sum")) >= clients * per_client


def _sample(text, key):
    (line,) = [ln for ln in text.splitlines() if ln.startswith(key + " ")]
    return line.split()[-1]


def _nan_body():
    data = ", ".join(["0.5"] * (3 * 32 * 32 - 1) + ["NaN"])
    return f'{{"inputs": [{{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [{data}]}}]}}'


BAD = [
    (lambda: encode_images(np.zeros((1, 3, 32, 32), np.uint8)), 400, "got UINT8 shape [1, 3, 32, 32]"),
    (lambda: encode_images(np.zeros((1, 32, 32), np.uint8)), 400, "got UINT8 shape [1, 32, 32]"),
    (lambda: _with(encode_images(np.zeros((1, 32, 32, 3), np.uint8)), datatype="INT32"), 400, "INT32 is not accepted"),
    (lambda: _with(encode_images(np.zeros((1, 32, 32, 3), np.uint8)), datatype="PIXELS"), 400, "unknown datatype"),
    (_nan_body, 400, "got NaN or Inf (or beyond FP32 range) in 1 of 1 image"),
    (lambda: encode_images(np.zeros((9, 32, 32, 3), np.uint8)), 400, "too many images: 9"),
    (lambda: b'{"inputs": [', 400, "not valid JSON"),
    (lambda: encode_images(np.zeros((80, 32, 32, 3), np.uint8)), 413, "exceeds the limit of 524288 bytes"),
]


def _with(body, **fields):
    body["inputs"][0].update(fields)
    return body


@pytest.mark.parametrize(("make", "status", "message"), BAD)
def test_bad_input_gets_its_status_then_a_good_request_is_answered(server, committee, make, status, message):
    body = make()
    r = server.infer(json.dumps(body) if isinstance(body, dict) else body)
    assert r.status_code == status and message in r.json()["error"], r.text
    x = np.random.default_rng(7).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    good = server.infer(encode_images(x))
    assert good.status_code == 200 and np.array_equal(decode_outputs(good.json())["label"], committee.predict(x))


def test_tritons_own_http_client_in_binary_and_json(server, committee):
    """NVIDIA's client (tritonclient.http, binary tensors by default) against lsmha-serve."""
    try:
        import tritonclient.http as tc
    except (ImportError, RuntimeError) as err:  # tritonclient without its http extra raises RuntimeError
        pytest.skip(f"needs tritonclient[http] (the dev extra): {err}")
    rng = np.random.default_rng(5)
    client = tc.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_ready() and "binary_tensor_data" in client.get_server_metadata()["extensions"]
        for fp32, binary in [(False, True), (False, False), (True, True)]:
            x = _images(rng, 3, fp32)
            images = tc.InferInput("images", list(x.shape), "FP32" if fp32 else "UINT8")
            images.set_data_from_numpy(x, binary_data=binary)
            outputs = [
                tc.InferRequestedOutput("logits", binary_data=binary),
                tc.InferRequestedOutput("label", binary_data=not binary),
                tc.InferRequestedOutput("member_logits", binary_data=binary),
            ]
            result = client.infer(NAME, [images], outputs=outputs)
            assert np.array_equal(result.as_numpy("label"), committee.predict(x))
            np.testing.assert_allclose(result.as_numpy("logits"), committee.predict_logits(x), rtol=1e-5, atol=1e-4)
            members = committee.member_logits(x).transpose(1, 0, 2)
            np.testing.assert_allclose(result.as_numpy("member_logits"), members, rtol=1e-5, atol=1e-4)
        # the versioned routes: version "1" is the model, another version is a 404 that says so
        assert client.is_model_ready(NAME, "1") and client.get_model_metadata(NAME, "1")["versions"] == ["1"]
        result = client.infer(NAME, [images], model_version="1")
        assert result.get_response()["model_version"] == "1" and result.as_numpy("label").shape == (3,)
        with pytest.raises(tc.InferenceServerException, match="has no version '2'; it has version '1'"):
            client.infer(NAME, [images], model_version="2")
    finally:
        client.close()
    blobs: list[bytes] = []
    body, length = join_body(encode_images(_images(rng, 2, False), blobs=blobs), blobs)
    r = server.infer(body[:-1], headers={"Inference-Header-Content-Length": str(length)})  # one byte short
    assert r.status_code == 400 and "binary_data_size says 6144 bytes, the body holds 6143" in r.json()["error"]


def test_unknown_model_and_route_are_404_with_v2_errors(server):
    r = server.infer(encode_images(np.zeros((1, 32, 32, 3), np.uint8)), name="resnet")
    assert r.status_code == 404 and "unknown model 'resnet'" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/resnet").status_code == 404
    r = httpx.get(f"{server.url}/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    errors = httpx.get(f"{server.url}/metrics").text
    assert float(_sample(errors, 'lsmha_errors_total{kind="unknown_model"}')) >= 1


def test_metadata_and_health(server, committee):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    meta = httpx.get(f"{server.url}/v2/models/{NAME}").json()
    assert meta["members"] == committee.members and meta["backend"] == committee.backend
    assert meta["inputs"] == [  # both forms of the one input; a request sends exactly one, as parameters say
        {"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]},
        {"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]},
    ]
    assert "exactly one" in meta["parameters"]["inputs"] and "input_alternatives" not in meta
    assert [o["name"] for o in meta["outputs"]] == ["logits", "label", "member_logits"]
    assert meta["outputs"][2]["shape"] == [-1, 2, 10]


def test_not_ready_until_loaded_and_warmed(export_dir):
    release = threading.Event()

    def loader():
        assert release.wait(timeout=60)
        return Committee.load(export_dir, "onnxruntime")

    with Server(CommitteeService(loader, ServeConfig(max_batch=4))) as s:
        assert httpx.get(f"{s.url}/v2/health/live").status_code == 200
        r = httpx.get(f"{s.url}/v2/health/ready")
        assert r.status_code == 503 and "still loading" in r.json()["error"] and r.headers["retry-after"] == "1"
        assert s.infer(encode_images(np.zeros((1, 32, 32, 3), np.uint8))).status_code == 503
        release.set()
        s.wait_ready()
        assert s.infer(encode_images(np.zeros((1, 32, 32, 3), np.uint8))).status_code == 200
        assert s.service.batcher.stats.batches == 1  # warm-up runs outside the batcher


def test_failed_load_keeps_reporting_why(tmp_path):
    failures = []

    def loader():
        raise FileNotFoundError("no manifest here")

    with Server(CommitteeService(loader, ServeConfig(), failures.append)) as s:
        deadline = time.monotonic() + 10
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = httpx.get(f"{s.url}/v2/health/ready")
        assert r.status_code == 503 and "no manifest here" in r.json()["error"]


def test_serve_bench_measures_against_direct_predict(server, committee):
    from lsmha.bench.serve import add_serve_parser, measure_direct, measure_server

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(4)]
    expected = [committee.predict(x) for x in images]
    row = measure_server(server.url, NAME, images, expected, clients=4, requests=16)
    assert row.requests == 16 and row.errors == 0 and row.mismatches == 0
    assert row.p99_ms >= row.p50_ms > 0 and row.requests_per_s > 0 and row.mean_batch_images >= 2
    direct = measure_direct(committee, images, requests=8, warmup=1)
    assert direct.requests == 8 and direct.mode == "direct" and direct.images_per_s == 2 * direct.requests_per_s
    wrong = measure_server(server.url, NAME, images, [e + 1 for e in expected], clients=2, requests=4)
    assert wrong.mismatches == 4  # the check can fail
    binary = measure_server(server.url, NAME, images, expected, clients=2, requests=8, binary=True)
    assert binary.requests == 8 and binary.errors == 0 and binary.mismatches == 0
    wrong = measure_server(server.url, NAME, images, [e + 1 for e in expected], clients=2, requests=4, binary=True)
    assert wrong.mismatches == 4
    sub = argparse.ArgumentParser().add_subparsers()
    add_serve_parser(sub)
    args = sub.choices["serve"].parse_args(["some/dir", "--clients", "3"])
    assert args.clients == 3 and args.max_batch == 32 and args.func.__name__ == "cmd_serve"


# -- Triton model repository ---------------------------------------------------------------------


def _triton_model_config():
    """Triton's own `inference.ModelConfig` message, from the model_config_pb2 that tritonclient ships
    (loaded from its file: importing `tritonclient.grpc` would also need grpcio)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed (pip install tritonclient): it ships Triton's model-config schema")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _parse_config(model_dir):
    from google.protobuf import text_format

    pb2 = _triton_model_config()
    return pb2, text_format.Parse((model_dir / "config.pbtxt").read_text(), pb2.ModelConfig())


def test_triton_repository_parses_with_tritons_schema_and_matches_the_graph(export_dir, committee, tmp_path):
    import onnxruntime as ort

    from lsmha.export.triton_cli import register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    args = sub.choices["triton"].parse_args([str(export_dir), "--out", str(tmp_path / "repo"), "--max-batch", "16"])
    assert args.func(args) == 0
    model_dir = tmp_path / "repo" / NAME
    pb2, config = _parse_config(model_dir)
    assert config.name == NAME and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.instance_group[0].count == 1 and config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_AUTO
    (inp,) = config.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", pb2.TYPE_FP32, [3, 32, 32])
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", pb2.TYPE_FP32, [10]),
        ("member_logits", pb2.TYPE_FP32, [2, 10]),
        ("label", pb2.TYPE_INT64, [1]),  # lsmha-serve's outputs; (N,) is dims [1] reshaped to []
    ]
    assert config.output[2].HasField("reshape") and list(config.output[2].reshape.shape) == []
    # the config describes the copied graph exactly: batch axis first, the config's dims after it
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    for tensor, declared in zip(session.get_inputs(), config.input):
        assert tensor.name == declared.name and tensor.shape[1:] == list(declared.dims)
    graph_outputs = {o.name: o.shape for o in session.get_outputs()}
    for declared in config.output:
        dims = declared.reshape.shape if declared.HasField("reshape") else declared.dims
        assert graph_outputs[declared.name][1:] == list(dims)
    x = np.random.default_rng(5).normal(size=(3, 3, 32, 32)).astype(np.float32)
    logits, members, label = session.run(["logits", "member_logits", "label"], {"images": x})
    assert label.dtype == np.int64 and np.array_equal(label, committee.predict(x))
    np.testing.assert_allclose(logits, committee.predict_logits(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(members, committee.member_logits(x).transpose(1, 0, 2), rtol=1e-5, atol=1e-5)


def test_triton_repository_takes_pixels_through_an_ensemble(export_dir, committee, tmp_path):
    """UINT8 NHWC images, lsmha-serve's other form of the input, as a second model: an ensemble of
    a Transpose+Cast graph and the committee, both configs in Triton's schema, wired name to name;
    the two graphs chained answer as the committee does for the same pixels."""
    import onnxruntime as ort

    from lsmha.serving.triton import write_triton_repository

    repo = tmp_path / "repo"
    write_triton_repository(export_dir, repo, max_batch=8)
    pb2, ensemble = _parse_config(repo / f"{NAME}_pixels")
    _, to_nchw = _parse_config(repo / f"{NAME}_to_nchw")
    _, committee_config = _parse_config(repo / NAME)
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == to_nchw.max_batch_size == 8
    (inp,) = ensemble.input
    assert (inp.name, inp.data_type, inp.format, list(inp.dims)) == (
        "images", pb2.TYPE_UINT8, pb2.ModelInput.FORMAT_NHWC, [32, 32, 3],
    )  # fmt: skip
    assert [o.name for o in ensemble.output] == [o.name for o in committee_config.output]
    first, second = ensemble.ensemble_scheduling.step
    assert (first.model_name, dict(first.output_map)) == (f"{NAME}_to_nchw", {"images_nchw": "images_nchw"})
    assert (second.model_name, dict(second.input_map)) == (NAME, {"images": "images_nchw"})
    assert set(second.output_map) == {o.name for o in committee_config.output}
    pixels = np.random.default_rng(9).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    (nchw,) = ort.InferenceSession(str(repo / f"{NAME}_to_nchw" / "1" / "model.onnx")).run(None, {"images": pixels})
    session = ort.InferenceSession(str(repo / NAME / "1" / "model.onnx"))
    logits, label = session.run(["logits", "label"], {"images": nchw})
    np.testing.assert_allclose(logits, committee.predict_logits(pixels), rtol=1e-5, atol=1e-4)
    assert np.array_equal(label, committee.predict(pixels))


def test_triton_prefers_a_tensorrt_plan(export_dir, tmp_path):
    """The writer only copies a plan's bytes and reads its manifest entry; a TensorRT engine cannot
    be built without a GPU, so this plan file holds placeholder bytes beside a real manifest entry."""
    from lsmha.artifacts import COMMITTEE, add_entries, file_entry, read_manifest
    from lsmha.serving.triton import write_triton_repository

    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    onnx_entry = read_manifest(copy).find(format="onnx", scope=COMMITTEE)[0]
    (copy / "committee.plan").write_bytes(b"placeholder engine bytes")
    entry = file_entry(
        copy, "committee.plan", format="plan", precision="fp16", scope=COMMITTEE,
        inputs=onnx_entry.inputs, outputs=onnx_entry.outputs, profile={"min": 1, "opt": 4, "max": 8},
    )  # fmt: skip
    add_entries(copy, [entry])
    model_dir = write_triton_repository(copy, tmp_path / "repo", max_batch=64, instances=2)
    pb2, config = _parse_config(model_dir)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8  # capped by the plan's profile
    assert [o.name for o in config.output] == ["logits"]  # (M, batch, classes) cannot be batched by Triton
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and config.instance_group[0].count == 2
    assert (model_dir / "1" / "model.plan").read_bytes() == b"placeholder engine bytes"


def test_triton_refuses_exports_without_a_committee_graph(tmp_path, export_dir):
    from lsmha.artifacts import read_manifest, write_manifest
    from lsmha.serving.triton import write_triton_repository

    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    manifest = read_manifest(copy)
    manifest.files = [e for e in manifest.files if e.format != "onnx"]
    write_manifest(manifest)
    with pytest.raises(ValueError, match="no whole-committee ONNX graph or TensorRT plan"):
        write_triton_repository(copy, tmp_path / "repo")


# -- the command line ------------------------------------------------------------------------------


def test_lsmha_serve_process_serves_and_refuses_bad_directories(export_dir, committee, tmp_path):
    from lsmha.bench.serve import free_port, start_server, stop_server
    from lsmha.serving.cli import main

    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(tmp_path)]) == 2  # exists, but holds no manifest: a bad input, usage
    port = free_port()
    proc = start_server(export_dir, port, ["--backend", "onnxruntime", "--max-batch", "4", "--name", "cifar"])
    try:
        x = np.random.default_rng(11).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/cifar/infer", json=encode_images(x), timeout=30)
        assert r.status_code == 200 and np.array_equal(decode_outputs(r.json())["label"], committee.predict(x))
    finally:
        stop_server(proc)


def test_lsmha_serve_bad_options_are_usage_and_a_missing_backend_is_environment(export_dir, capsys):
    from lsmha.serving.cli import main

    for args, code, says in (
        (["--port", "70000"], 2, "--port must be between 0 and 65535"),
        (["--port", "-5"], 2, "--port must be between 0 and 65535"),
        (["--backend", "nosuch"], 2, "unknown --backend 'nosuch'"),
        (["--threads", "0"], 2, "option threads=0 is not allowed: "),
    ):
        assert main([str(export_dir), *args]) == code, args
        assert says in capsys.readouterr().err
    if not torch.cuda.is_available():  # loading fails after the server starts: no device here
        assert main([str(export_dir), "--backend", "tensorrt", "--port", "0", "--log-level", "error"]) == 3
        assert "no CUDA device" in capsys.readouterr().err
