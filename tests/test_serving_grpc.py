"""The KServe v2 gRPC endpoint beside HTTP in one server, and Triton's model configuration and
statistics extensions: NVIDIA's own clients (tritonclient.grpc and tritonclient.http) pass the
same end-to-end checks, and bad gRPC input (bytes that are no message, wrong datatypes, shapes,
values, oversize messages) is refused with the right status, never INTERNAL, the server serving on.
One server (HTTP and gRPC, tiny two-member committee from conftest) for the whole module."""

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig

grpc = pytest.importorskip("grpc", reason="needs grpcio (the serve extra)")
tc_grpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (the dev extra)")
tc_http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (the dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

from lsmha.engine import Committee  # noqa: E402
from lsmha.serving.proto import kserve_v2_pb2 as pb  # noqa: E402

NAME = "lsmha_committee"
MAX_BATCH = 8
METHOD = "/inference.GRPCInferenceService/"
# what each protocol answers for the same refusal
STATUS = {
    "grpc": {400: "StatusCode.INVALID_ARGUMENT", 404: "StatusCode.NOT_FOUND"},
    "http": {400: "400", 404: "404"},
}


@pytest.fixture(scope="module")
def server(serving_export):
    config = ServeConfig(max_batch=MAX_BATCH, max_delay_ms=5, max_queue=64, max_body_mb=0.5)
    service = CommitteeService(lambda: Committee.load(serving_export, "onnxruntime"), config)
    with BackgroundServer(service, grpc=True) as s:
        s.wait_ready()
        yield s


@pytest.fixture(scope="module")
def committee(server):
    return server.service.committee  # the served committee itself: the reference for every answer


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


def _client(server, protocol):
    if protocol == "grpc":
        return tc_grpc, tc_grpc.InferenceServerClient(server.grpc_target)
    return tc_http, tc_http.InferenceServerClient(server.url.removeprefix("http://"))


def _images(n, fp32, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255 if fp32 else pixels


def _status(err: InferenceServerException) -> str:
    return str(err.status())


def _n(doc, *keys) -> int:
    """A count in a statistics document (gRPC's JSON leaves out zeros and writes uint64 as text)."""
    for key in keys:
        doc = doc.get(key, {})
    return int(doc or 0)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritonclient_end_to_end(server, committee, protocol):
    """Health, metadata, configuration, inference (UINT8 and FP32, batch 1 and 8), errors and
    statistics through NVIDIA's client, the same checks for gRPC and HTTP."""
    tc, client = _client(server, protocol)
    as_json = {"as_json": True} if protocol == "grpc" else {}
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        extensions = client.get_server_metadata(**as_json)["extensions"]
        assert {"model_configuration", "statistics"} <= set(extensions)
        meta = client.get_model_metadata(NAME, **as_json)
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
            ("images", "UINT8", [-1, 32, 32, 3]),
            ("images", "FP32", [-1, 3, 32, 32]),
        ]
        assert [t["name"] for t in meta["outputs"]] == ["logits", "label", "member_logits"]
        config = client.get_model_config(NAME, **as_json)
        config = config.get("config", config)  # gRPC wraps it in ModelConfigResponse
        assert config["name"] == NAME and int(config["max_batch_size"]) == MAX_BATCH
        assert [(i["data_type"], i["format"], i["optional"]) for i in config["input"]] == [
            ("TYPE_UINT8", "FORMAT_NHWC", True),
            ("TYPE_FP32", "FORMAT_NCHW", True),
        ]
        assert [int(d) for d in config["output"][2]["dims"]] == [2, 10]
        assert "exactly one" in config["parameters"]["inputs"]["string_value"]
        before = client.get_inference_statistics(NAME, **as_json)["model_stats"][0]

        answered = 0
        for fp32 in (False, True):
            for n in (1, MAX_BATCH):
                x = _images(n, fp32, seed=n + fp32)
                images = tc.InferInput("images", list(x.shape), "FP32" if fp32 else "UINT8")
                images.set_data_from_numpy(x)
                outputs = [tc.InferRequestedOutput(o) for o in ("logits", "label", "member_logits")]
                result = client.infer(NAME, [images], outputs=outputs, request_id=f"r{n}")
                assert np.array_equal(result.as_numpy("label"), committee.predict(x))
                np.testing.assert_allclose(result.as_numpy("logits"), committee.predict_logits(x), rtol=1e-5, atol=1e-4)
                members = committee.member_logits(x).transpose(1, 0, 2)
                np.testing.assert_allclose(result.as_numpy("member_logits"), members, rtol=1e-5, atol=1e-4)
                answered += n
        default = client.infer(NAME, [images])  # no outputs asked: logits and label
        assert default.as_numpy("member_logits") is None and default.as_numpy("label").shape == (MAX_BATCH,)
        answered += MAX_BATCH

        x = _images(1, False)
        for name, datatype, array, status, message in [
            ("images", "INT32", x.astype(np.int32), 400, "datatype INT32 is not accepted"),
            ("images", "UINT8", x[:, :16], 400, "expected UINT8 NHWC shape [N, 32, 32, 3]"),
            ("images", "UINT8", _images(MAX_BATCH + 1, False), 400, "too many images: 9"),
            ("pixels", "UINT8", x, 400, "unknown input 'pixels'"),
        ]:
            bad = tc.InferInput(name, list(array.shape), datatype)
            bad.set_data_from_numpy(array)
            with pytest.raises(InferenceServerException, match=re.escape(message)) as err:
                client.infer(NAME, [bad])
            assert _status(err.value) == STATUS[protocol][status]
        with pytest.raises(InferenceServerException, match="unknown model 'resnet'") as err:
            client.infer("resnet", [images])
        assert _status(err.value) == STATUS[protocol][404]
        with pytest.raises(InferenceServerException, match="has no version '2'") as err:
            client.get_model_config(NAME, "2")
        assert _status(err.value) == STATUS[protocol][404]

        after = client.get_inference_statistics(NAME, **as_json)["model_stats"][0]
        stats, was = after["inference_stats"], before["inference_stats"]
        assert _n(stats, "success", "count") - _n(was, "success", "count") == 5
        assert _n(stats, "fail", "count") - _n(was, "fail", "count") == 4  # the unknown model is not this model's
        assert _n(after, "inference_count") - _n(before, "inference_count") == answered
        assert _n(stats, "queue", "count") >= 5 and _n(stats, "compute_infer", "ns") > 0
        assert _n(after, "execution_count") >= 1 and _n(after, "last_inference") > 0
        assert {int(b["batch_size"]) for b in after["batch_stats"]} >= {1, MAX_BATCH}
    finally:
        client.close()
        # tritonclient.http's __del__ closes again, on whichever thread the garbage collector runs
        # (its gevent pool then complains there): once is enough
        client.close = lambda: None


def _call(channel, method, data: bytes, timeout=30):
    """One raw unary call: bytes in, bytes out, the status on error."""
    return channel.unary_unary(METHOD + method)(data, timeout=timeout)


def _request(shape, datatype="UINT8", raw: bytes | None = None, **contents) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=NAME)
    tensor = req.inputs.add(name="images", datatype=datatype, shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return req


def test_typed_contents_answer_as_raw_contents_do(channel, committee):
    """Values as protobuf numbers (uint_contents, fp32_contents) are decoded as raw bytes are,
    and the answer carries every output in raw_output_contents, as Triton's does."""
    for x, field in [(_images(2, False, 3), "uint_contents"), (_images(2, True, 4), "fp32_contents")]:
        datatype = "UINT8" if x.dtype == np.uint8 else "FP32"
        req = _request(list(x.shape), datatype, **{field: x.reshape(-1).tolist()})
        req.id = "typed"
        answer = pb.ModelInferResponse.FromString(_call(channel, "ModelInfer", req.SerializeToString()))
        assert answer.id == "typed" and [o.name for o in answer.outputs] == ["logits", "label"]
        assert not answer.outputs[0].HasField("contents") and len(answer.raw_output_contents) == 2
        label = np.frombuffer(answer.raw_output_contents[1], "<i8")
        assert list(answer.outputs[1].shape) == [2] and np.array_equal(label, committee.predict(x))


def test_bad_grpc_input_is_refused_never_internal(server, channel):
    """Bytes that are no message, wrong fields, datatypes, shapes and values, and a message over
    --max-body-mb: each gets its status and a message saying what was wrong; the server serves on."""
    x = _images(1, False)
    ok = x.tobytes()
    both = _request([1, 32, 32, 3], raw=ok, uint_contents=[0])
    parameter = _request([1, 32, 32, 3], raw=ok)
    parameter.outputs.add(name="logits").parameters["classification"].int64_param = 3
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (b"\xff\xff\xff", invalid, "not a valid inference.ModelInferRequest"),
        (b"\x0a\x05ab", invalid, "not a valid inference.ModelInferRequest"),  # a string cut short
        (_request([1, 32, 32, 3], raw=ok[:-1]), invalid, "binary_data_size is 3071 bytes"),
        (_request([1, 32, 32, 3], "FP16", raw=ok), invalid, "datatype FP16 is not accepted"),
        (_request([1, 32, 32, 3], "STRING", raw=ok), invalid, "unknown datatype 'STRING'"),
        (_request([1, 3, 32, 32], "UINT8", raw=ok), invalid, "expected UINT8 NHWC shape"),
        (_request([-1, 32, 32, 3], raw=ok), invalid, "non-negative"),
        (_request([1 << 62, 32, 32, 3], raw=ok), invalid, "too many images"),
        (_request([0, 32, 32, 3], raw=b""), invalid, "at least one image"),
        (_request([1, 32, 32, 3], uint_contents=[300] * 3072), invalid, "must lie in 0..255"),
        (_request([1, 32, 32, 3], uint_contents=[1] * 5), invalid, "'data' holds 5 values"),
        (_request([1, 32, 32, 3], fp32_contents=[0.0] * 3072), invalid, "expected its values in contents.uint_con"),
        (_request([1, 3, 32, 32], "FP32", fp32_contents=[float("nan")] * 3072), invalid, "expected finite FP32"),
        (_request([1, 32, 32, 3]), invalid, "'data' holds 0 values"),
        (both, invalid, "both contents.uint_contents and raw_input_contents"),
        (parameter, invalid, "classification not supported"),
        (pb.ModelInferRequest(model_name=NAME, raw_input_contents=[ok]), invalid, "1 entries for 0 input"),
        (pb.ModelInferRequest(model_name="x/y"), grpc.StatusCode.NOT_FOUND, "unknown model 'x/y'"),
        (b"\x0a" + bytes([0x80, 0x80, 0x40]) + b"\x00" * 10, invalid, "not a valid"),  # length beyond the message
        (_request([8, 32, 32, 3], raw=bytes(600_000)), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ]
    metrics = server.service.metrics
    refused_before = metrics.value("lsmha_errors_total", kind="bad_request")
    for message, code, text in cases:
        data = message if isinstance(message, bytes) else message.SerializeToString()
        with pytest.raises(grpc.RpcError) as err:
            _call(channel, "ModelInfer", data)
        assert err.value.code() == code and text in err.value.details(), (text, err.value.details())
    for method in ("ModelMetadata", "ModelConfig", "ModelStatistics", "ModelReady"):
        with pytest.raises(grpc.RpcError) as err:
            _call(channel, method, b"\xff")
        assert err.value.code() == invalid
    with pytest.raises(grpc.RpcError) as err:
        _call(channel, "ModelStreamInfer", b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert metrics.value("lsmha_errors_total", kind="bad_request") - refused_before == 18  # all but two
    # still serving, and the deadline a client sets is honoured
    assert pb.ServerReadyResponse.FromString(_call(channel, "ServerReady", b"")).ready
    answer = pb.ModelInferResponse.FromString(
        _call(channel, "ModelInfer", _request([1, 32, 32, 3], raw=ok).SerializeToString())
    )
    assert len(answer.raw_output_contents) == 2


class SlowCommittee:
    """A stand-in committee whose every batch takes `seconds`: a call is surely in flight when
    the shutdown begins."""

    img_size, in_chans, num_classes, members, backend = 32, 3, 10, ["a", "b"], "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __len__(self) -> int:
        return 2

    def predict_logits(self, images):
        import time

        time.sleep(self.seconds)
        return np.zeros((len(images), 10), np.float32)

    def close(self) -> None:
        pass


def test_not_ready_queue_full_deadline_and_shutdown_over_grpc():
    """The server's states as gRPC statuses, on a stand-in committee whose batch takes 1 s: not
    ready yet is UNAVAILABLE (liveness answers); a full queue is UNAVAILABLE naming --max-queue; a
    passed client deadline is DEADLINE_EXCEEDED, counted as a timeout; on shutdown a call already
    running is answered before the batcher stops, and the port then refuses calls."""
    import threading
    import time

    release = threading.Event()

    def load():
        assert release.wait(timeout=60)
        return SlowCommittee(1.0)

    config = ServeConfig(max_batch=1, max_delay_ms=0, max_queue=1, warmup=False, shutdown_timeout_s=10)
    server = BackgroundServer(CommitteeService(load, config), grpc=True)
    request = _request([1, 32, 32, 3], raw=bytes(3072)).SerializeToString()
    unavailable = grpc.StatusCode.UNAVAILABLE
    answers, refusals = [], []

    def infer(timeout=30):
        try:
            answers.append(_call(ch, "ModelInfer", request, timeout=timeout))
        except grpc.RpcError as err:
            refusals.append((err.code(), err.details()))

    with server:
        ch = grpc.insecure_channel(server.grpc_target)
        assert pb.ServerLiveResponse.FromString(_call(ch, "ServerLive", b"")).live
        assert not pb.ServerReadyResponse.FromString(_call(ch, "ServerReady", b"")).ready
        for method, message in [("ModelInfer", request), ("ModelConfig", pb.ModelConfigRequest(name=NAME))]:
            with pytest.raises(grpc.RpcError) as err:
                _call(ch, method, message if isinstance(message, bytes) else message.SerializeToString())
            assert err.value.code() == unavailable and "still loading" in err.value.details()
        release.set()
        server.wait_ready()

        with pytest.raises(grpc.RpcError) as err:
            _call(ch, "ModelInfer", request, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while server.service.metrics.value("lsmha_errors_total", kind="timeout") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        calls = [threading.Thread(target=infer) for _ in range(4)]  # one runs, one waits, the rest are refused
        for c in calls:
            c.start()
            time.sleep(0.05)
        time.sleep(0.2)
    for c in calls:
        c.join(timeout=30)
    assert [details for code, details in refusals if code == unavailable and "max_queue=1" in details], refusals
    assert len(answers) >= 1 and len(pb.ModelInferResponse.FromString(answers[0]).raw_output_contents) == 2
    assert len(answers) + len(refusals) == 4
    with pytest.raises(grpc.RpcError) as err:
        _call(ch, "ServerLive", b"", timeout=5)
    assert err.value.code() == unavailable
    ch.close()


def test_serve_bench_grpc_mode_checks_every_answer(server, committee):
    """lsmha-bench serve's gRPC mode times ModelInfer calls and compares each answer with direct predict."""
    from lsmha.bench.kserve_committee import kserve_skipped
    from lsmha.bench.serve import add_serve_parser
    from lsmha.bench.serve_grpc import measure_grpc

    images = [_images(n, False, seed=n) for n in (1, 3)]
    expected = [committee.predict(x) for x in images]
    row = measure_grpc(server.url, server.grpc_target, NAME, images, expected, clients=2, requests=6)
    assert (row.mode, row.requests, row.errors, row.mismatches) == ("grpc", 6, 0, 0) and row.p99_ms >= row.p50_ms > 0
    wrong = measure_grpc(server.url, server.grpc_target, NAME, images, [e + 1 for e in expected], clients=2, requests=4)
    assert wrong.mismatches == 4  # the check can fail
    assert kserve_skipped(Path(__file__).parent).startswith("kserve: skipped, ")  # no committee.onnx there
    sub = argparse.ArgumentParser().add_subparsers()
    add_serve_parser(sub)
    assert sub.choices["serve"].parse_args(["d"]).images == "1,8"  # batch 1 and 8 in one run by default
