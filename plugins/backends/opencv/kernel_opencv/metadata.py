"""Input and output metadata that `cv2.dnn` does not give reliably, read from the files."""

from __future__ import annotations

from pathlib import Path

from kernel import ModelError, TensorInfo, datatype_name


def onnx_tensors(path: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs (initializers excluded) and outputs; unknown dimensions are -1."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as exc:  # protobuf's decode errors share no useful base class
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    constants = {init.name for init in graph.initializer}

    def info(value: onnx.ValueInfoProto) -> TensorInfo:
        tensor = value.type.tensor_type
        try:
            datatype = datatype_name(tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, ValueError):
            raise ModelError(f"tensor {value.name!r} has a type the kernel cannot serve") from None
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorInfo(name=value.name, datatype=datatype, shape=shape)

    inputs = [info(v) for v in graph.input if v.name not in constants]
    outputs = [info(v) for v in graph.output]
    for tensor in inputs + outputs:
        if tensor.datatype not in EXACT_IN_FP32:
            raise ModelError(
                f"tensor {tensor.name!r} is {tensor.datatype}: OpenCV computes in 32-bit floats, which "
                f"hold only {', '.join(sorted(EXACT_IN_FP32))} values exactly; serve it with onnxruntime"
            )
    return inputs, outputs


#: Datatypes whose every value a 32-bit float holds, the only numbers cv2.dnn computes with.
EXACT_IN_FP32 = frozenset({"FP32", "FP16", "UINT8", "INT8"})


def darknet_input_shape(cfg: str) -> tuple[int, int, int, int]:
    """[1, channels, height, width] from the cfg's [net] section (OpenCV runs batch 1)."""
    values: dict[str, str] = {}
    section = None
    for line in Path(cfg).read_text("utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("["):
            if section is not None:
                break
            section = line.strip("[]").strip().lower()
        elif "=" in line and section in ("net", "network"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    try:
        return 1, int(values.get("channels", 3)), int(values["height"]), int(values["width"])
    except (KeyError, ValueError):
        raise ModelError(f"{cfg} has no [net] section with numeric width= and height=") from None
