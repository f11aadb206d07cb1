"""A bounded load test over loopback: 16 concurrent clients, 256 requests of 1-4 distinct images
each (UINT8 and FP32, JSON and binary tensors, with and without member logits), every answer
checked against `Committee.predict` on the same images: none lost, none misrouted."""

import concurrent.futures
import json
import threading

import httpx
import numpy as np
import pytest

from lsmha.engine import Committee
from lsmha.serving import BackgroundServer, CommitteeService, ServeConfig
from lsmha.serving.protocol import HEADER_LENGTH, decode_outputs, encode_images, join_body

NAME = "lsmha_committee"
CLIENTS, PER_CLIENT = 16, 16


@pytest.fixture(scope="module")
def committee(serving_export):
    c = Committee.load(serving_export, "onnxruntime", threads=1)
    yield c
    c.close()


def _request(c: int, k: int):
    """Client c's k-th request: its images (seeded by (c, k), so distinct) and how it is sent."""
    rng = np.random.default_rng([c, k])
    n = 1 + (c + k) % 4
    pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255 if (c + k) % 3 == 0 else pixels
    outputs = ("logits", "label", "member_logits") if k % 4 == 0 else None
    return images, outputs, (c * 7 + k) % 2 == 0


def _send(http: httpx.Client, url: str, images, outputs, binary: bool, request_id: str):
    if not binary:
        r = http.post(url, json=encode_images(images, outputs, request_id))
        return r, (r.json() if r.status_code == 200 else None), b""
    blobs: list[bytes] = []
    body, length = join_body(encode_images(images, outputs, request_id, blobs=blobs), blobs)
    r = http.post(url, content=body, headers={HEADER_LENGTH: str(length)})
    if r.status_code != 200:
        return r, None, b""
    head = int(r.headers[HEADER_LENGTH])
    return r, json.loads(r.content[:head]), r.content[head:]


def test_sixteen_clients_lose_and_misroute_nothing(serving_export, committee):
    config = ServeConfig(max_batch=8, max_delay_ms=2, max_queue=CLIENTS * 2)
    service = CommitteeService(lambda: Committee.load(serving_export, "onnxruntime", threads=1), config)
    barrier = threading.Barrier(CLIENTS)
    with BackgroundServer(service) as server:
        server.wait_ready()
        url = f"{server.url}/v2/models/{NAME}/infer"

        def client(c: int):
            answers = []
            with httpx.Client(timeout=60) as http:
                barrier.wait(timeout=60)  # all first requests arrive together
                for k in range(PER_CLIENT):
                    images, outputs, binary = _request(c, k)
                    r, doc, blob = _send(http, url, images, outputs, binary, f"{c}-{k}")
                    answers.append((k, r.status_code, doc, blob))
            return answers

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, c) for c in range(CLIENTS)]
            results = [f.result(timeout=240) for f in futures]  # bounded: a hang fails, never waits
        stats = service.batcher.stats

    lost = [(c, k, status) for c, answers in enumerate(results) for k, status, _, _ in answers if status != 200]
    assert sum(len(a) for a in results) == CLIENTS * PER_CLIENT and lost == []
    reference = _reference(committee)
    misrouted, near_ties = [], 0
    for c, answers in enumerate(results):
        for k, _, doc, blob in answers:
            images, outputs, _ = _request(c, k)
            logits, labels, members = reference[c, k]
            out = decode_outputs(doc, blob)
            top2 = np.sort(logits, axis=1)[:, -2:]
            tied = top2[:, 1] - top2[:, 0] < 1e-4  # batched and single runs may round a near tie apart
            near_ties += int(tied.sum())
            ok = doc["id"] == f"{c}-{k}" and out["logits"].shape == logits.shape
            ok = ok and np.allclose(out["logits"], logits, rtol=1e-4, atol=1e-4)
            ok = ok and np.array_equal(out["label"][~tied], labels[~tied])
            if outputs is not None:
                ok = ok and np.allclose(out["member_logits"], members, rtol=1e-4, atol=1e-4)
            else:
                ok = ok and set(out) == {"logits", "label"}
            if not ok:
                misrouted.append(f"{c}-{k}")
    assert misrouted == [] and near_ties <= 2
    assert stats.requests == CLIENTS * PER_CLIENT and stats.failed_batches == 0
    assert stats.multi_request_batches > 0 and stats.largest_batch <= 8  # requests were merged, within bounds


def _reference(committee):
    """(c, k) -> Committee.predict_logits, .predict and member logits of that request's images,
    computed directly: one call per input kind over every request's images."""
    keys = [(c, k) for c in range(CLIENTS) for k in range(PER_CLIENT)]
    out = {}
    for kind in (np.uint8, np.float32):
        mine = [(key, _request(*key)[0]) for key in keys if _request(*key)[0].dtype == kind]
        images = np.concatenate([x for _, x in mine])
        logits, labels = committee.predict_logits(images), committee.predict(images)
        members = committee.member_logits(images).transpose(1, 0, 2)
        row = 0
        for key, x in mine:
            n = len(x)
            out[key] = logits[row : row + n], labels[row : row + n], members[row : row + n]
            row += n
    return out
