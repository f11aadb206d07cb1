"""Raw pixels for a Triton repository: lsmha-serve takes `images` as UINT8 NHWC or as FP32 NCHW
under one name, which Triton cannot (input names are unique in a model, and the ONNX Runtime
backend feeds every input a graph declares). So the repository offers UINT8 NHWC as a second
model, an ensemble in front of the committee:

    REPO/
      NAME/                 the committee: images FP32 NCHW -> logits, label, member_logits
      NAME_pixels/          images UINT8 NHWC -> the same outputs (platform "ensemble")
      NAME_to_nchw/         1/model.onnx: Transpose to NCHW and Cast to FP32, nothing else

Every member standardises each image itself, so the cast needs no scaling: the committee's
answer for pixels is its answer for the same pixels as floats, as in lsmha-serve.
"""

from __future__ import annotations

from pathlib import Path

PIXELS_SUFFIX = "_pixels"
TO_NCHW_SUFFIX = "_to_nchw"
OPSET = 13


def write_to_nchw_graph(path: Path, img_size: int, in_chans: int) -> None:
    """The preprocessing graph: `images` (N, H, W, C) uint8 -> `images_nchw` (N, C, H, W) float32."""
    import onnx
    from onnx import TensorProto, helper

    s, c = img_size, in_chans
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["images"], ["nchw_uint8"], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["nchw_uint8"], ["images_nchw"], to=TensorProto.FLOAT),
        ],
        "to_nchw",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", s, s, c])],
        [helper.make_tensor_value_info("images_nchw", TensorProto.FLOAT, ["batch", c, s, s])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lsmha")
    model.ir_version = 8  # readable by every ONNX Runtime Triton ships
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tensor(name: str, data_type: str, dims: tuple[int, ...], extra: str = "") -> str:
    shape = ", ".join(map(str, dims))
    return f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {shape} ]{extra}\n  }}'


def write_pixels_models(repo: Path, name: str, max_batch: int, img_size: int, in_chans: int, outputs: list) -> Path:
    """Write `NAME_to_nchw` and the ensemble `NAME_pixels` beside the committee model `NAME`,
    whose `outputs` (TritonTensor, in its config's order) the ensemble passes on.

    Returns:
        The ensemble's directory.
    """
    s, c = img_size, in_chans
    to_nchw, pixels = name + TO_NCHW_SUFFIX, name + PIXELS_SUFFIX
    (repo / to_nchw / "1").mkdir(parents=True, exist_ok=True)
    write_to_nchw_graph(repo / to_nchw / "1" / "model.onnx", s, c)
    (repo / to_nchw / "config.pbtxt").write_text(
        "\n".join(
            [
                f'name: "{to_nchw}"',
                'platform: "onnxruntime_onnx"',
                f"max_batch_size: {max_batch}",
                "input [\n" + _tensor("images", "TYPE_UINT8", (s, s, c), "\n    format: FORMAT_NHWC") + "\n]",
                "output [\n" + _tensor("images_nchw", "TYPE_FP32", (c, s, s)) + "\n]",
                "",
            ]
        )
    )
    (repo / pixels / "1").mkdir(parents=True, exist_ok=True)  # an ensemble's version directory stays empty
    maps = "\n".join(f'        output_map {{ key: "{t.name}" value: "{t.name}" }}' for t in outputs)
    output_tensors = ",\n".join(_tensor(t.name, t.data_type, t.dims, _reshape(t)) for t in outputs)
    (repo / pixels / "config.pbtxt").write_text(
        "\n".join(
            [
                f'name: "{pixels}"',
                'platform: "ensemble"',
                f"max_batch_size: {max_batch}",
                "input [\n" + _tensor("images", "TYPE_UINT8", (s, s, c), "\n    format: FORMAT_NHWC") + "\n]",
                "output [\n" + output_tensors + "\n]",
                "ensemble_scheduling {",
                "  step [",
                "    {",
                f'      model_name: "{to_nchw}"',
                "      model_version: -1",
                '      input_map { key: "images" value: "images" }',
                '      output_map { key: "images_nchw" value: "images_nchw" }',
                "    },",
                "    {",
                f'      model_name: "{name}"',
                "      model_version: -1",
                '      input_map { key: "images" value: "images_nchw" }',
                maps,
                "    }",
                "  ]",
                "}",
                "",
            ]
        )
    )
    return repo / pixels


def _reshape(t) -> str:
    """A batch-only tensor ((N,) like `label`) is dims [1] reshaped to [] in Triton's config."""
    return "\n    reshape: { shape: [ ] }" if getattr(t, "reshape_scalar", False) else ""
