"""What lsmha-serve says about its model in Triton's terms, for HTTP and gRPC alike: the model
configuration extension (`GET /v2/models/{name}/config`, gRPC ModelConfig), in the JSON form
Triton writes, and the checks of a model name and version that every model call makes.

The served input `images` takes one of two forms, UINT8 NHWC or FP32 NCHW. Triton's schema has
no alternatives, so the configuration lists both under `input`, each `optional`, with the same
name, and says in `parameters["inputs"]` that a request sends exactly one of them.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig
from .protocol import ACCEPTED, INPUT_NAME, show

MODEL_VERSION = "1"  # one version per server
# what GET /v2 and gRPC ServerMetadata list; binary_tensor_data is HTTP's (gRPC sends raw bytes)
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")
TRITON_DATATYPES = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}
ONE_INPUT = "send exactly one of the inputs named images: UINT8 NHWC (raw pixels) or FP32 NCHW (any scale)"


def unknown_model(config: ServeConfig, name: str, version: str | None) -> str | None:
    """Why `name` (and `version`, when given: None or "" is the server's choice) is not served, or None."""
    if name != config.name:
        return f"unknown model {show(name)}; this server serves {config.name!r}"
    if version and version != MODEL_VERSION:
        return f"model {name!r} has no version {show(version)}; it has version {MODEL_VERSION!r}"
    return None


def output_tensors(committee: Any, adaptive: bool) -> list[dict[str, Any]]:
    """The outputs as v2 metadata lists them: name, datatype, shape with -1 for the batch axis."""
    classes = committee.num_classes
    return [
        {"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "member_logits", "datatype": "FP32", "shape": [-1, len(committee.members), classes]},
    ] + ([{"name": "members_run", "datatype": "INT64", "shape": [-1]}] if adaptive else [])


def input_tensors(spec: Any) -> list[dict[str, Any]]:
    """Both accepted forms of `images`, as v2 metadata lists them (a request sends one)."""
    return [{"name": INPUT_NAME, "datatype": dt, "shape": [-1, *spec.shape(dt)]} for dt in ACCEPTED]


def model_config(service: Any) -> dict[str, Any]:
    """The served model's configuration, as Triton answers `GET /v2/models/{name}/config`."""
    committee, spec, config = service.committee, service.spec, service.config
    backend = committee.backend
    gpu = any(word in backend.lower() for word in ("cuda", "tensorrt"))
    return {
        "name": config.name,
        "platform": "lsmha_committee",
        "backend": backend,
        "max_batch_size": config.max_batch,
        "input": [
            {
                "name": t["name"],
                "data_type": TRITON_DATATYPES[t["datatype"]],
                "format": f"FORMAT_{ACCEPTED[t['datatype']]}",
                "dims": t["shape"][1:],
                "optional": True,
            }
            for t in input_tensors(spec)
        ],
        "output": [
            {"name": t["name"], "data_type": TRITON_DATATYPES[t["datatype"]], "dims": t["shape"][1:]}
            for t in output_tensors(committee, config.adaptive)
        ],
        "dynamic_batching": {
            "preferred_batch_size": [config.max_batch],
            "max_queue_delay_microseconds": round(config.max_delay_ms * 1e3),
        },
        "instance_group": [{"name": config.name, "count": 1, "kind": "KIND_GPU" if gpu else "KIND_CPU"}],
        "parameters": {
            "inputs": {"string_value": ONE_INPUT},
            "members": {"string_value": ",".join(committee.members)},
            "adaptive": {"string_value": str(config.adaptive).lower()},
        },
    }
