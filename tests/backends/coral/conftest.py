"""Fixtures for the coral backend: real models from PyPI wheels, tiny TFLite files built
here, and a kernel serving a model directory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import flatbuffers
import pytest

import kernel
from tests import realmodels
from tests.tflite_flatbuffers import table as flatbuffer_table
from tests.tflite_flatbuffers import vector as flatbuffer_vector


@pytest.fixture(scope="session")
def face_detector() -> Path:
    return realmodels.face_detector()


@pytest.fixture(scope="session")
def zidane() -> Path:
    return realmodels.photo("zidane.jpg")


# -- tiny TFLite models, written with the flatbuffers builder from TFLite's schema.fbs ------

#: TensorType values of schema.fbs.
TENSOR_TYPES = {"uint8": 3, "int8": 9}
#: BuiltinOperator values of schema.fbs.
ADD, CUSTOM = 0, 32


def tflite_model(
    dtype: str,
    quant_in: tuple[float, int],
    quant_out: tuple[float, int],
    custom_code: str | None = None,
    second_input: bool = False,
) -> bytes:
    """A one-op model with a quantized input `x` and output `y`, shapes [-1, 4].

    Without `custom_code` the op is ADD(x, x), so y = 2 * x in real values, or with
    `second_input` ADD(x, z) of two inputs. With `custom_code`, the op is that custom op, as
    an Edge TPU compiler's output holds `edgetpu-custom-op`.
    """
    b = flatbuffers.Builder(1024)

    vector, table = partial(flatbuffer_vector, b), partial(flatbuffer_table, b)

    def tensor(name: str, quant: tuple[float, int]) -> int:
        scales = vector([quant[0]], b.PrependFloat32)
        zero_points = vector([quant[1]], b.PrependInt64, size=8)
        # QuantizationParameters: scale (2), zero_point (3).
        quantization = table([("UOffsetTRelative", 2, scales), ("UOffsetTRelative", 3, zero_points)])
        fields = [
            ("UOffsetTRelative", 0, vector([1, 4], b.PrependInt32)),  # shape
            ("Int8", 1, TENSOR_TYPES[dtype]),  # type
            ("UOffsetTRelative", 3, b.CreateString(name)),  # name
            ("UOffsetTRelative", 4, quantization),
            ("UOffsetTRelative", 7, vector([-1, 4], b.PrependInt32)),  # shape_signature
        ]
        return table(fields)  # buffer (2) stays 0: the empty buffer every activation uses

    tensors = [tensor("x", quant_in), tensor("y", quant_out)]
    if second_input:
        tensors.append(tensor("z", quant_in))
    inputs = [0, 2] if second_input else [0]
    opcode = CUSTOM if custom_code else ADD
    # OperatorCode: deprecated_builtin_code (0), custom_code (1), version (2), builtin_code (3).
    code_fields = [("Int8", 0, opcode), ("Int32", 2, 1), ("Int32", 3, opcode)]
    if custom_code:
        code_fields.append(("UOffsetTRelative", 1, b.CreateString(custom_code)))
    operator_code = table(code_fields)
    # Operator: opcode_index (0), inputs (1), outputs (2).
    operator = table([
        ("UOffsetTRelative", 1, vector([0] if custom_code else inputs * (2 // len(inputs)), b.PrependInt32)),
        ("UOffsetTRelative", 2, vector([1], b.PrependInt32)),
    ])
    # SubGraph: tensors (0), inputs (1), outputs (2), operators (3).
    subgraph = table([
        ("UOffsetTRelative", 0, vector(tensors, b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 1, vector(inputs, b.PrependInt32)),
        ("UOffsetTRelative", 2, vector([1], b.PrependInt32)),
        ("UOffsetTRelative", 3, vector([operator], b.PrependUOffsetTRelative)),
    ])
    b.StartObject(1)
    empty_buffer = b.EndObject()
    # Model: version (0), operator_codes (1), subgraphs (2), buffers (4).
    model = table([
        ("Uint32", 0, 3),
        ("UOffsetTRelative", 1, vector([operator_code], b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 2, vector([subgraph], b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 4, vector([empty_buffer], b.PrependUOffsetTRelative)),
    ])
    b.Finish(model, file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture
def build_tflite() -> Callable[..., bytes]:
    return tflite_model


# -- a kernel serving a model directory ---------------------------------------------------

Body = Callable[[kernel.Kernel], Awaitable[Any]]


def serve(
    model_dir: Path,
    body: Body,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """Start a kernel on `model_dir`, await `body(kernel)`, shut it down; body's result."""

    async def main() -> Any:
        k = kernel.create_kernel(options={
            "kernel": {"model_dir": [str(model_dir)], "state_dir": str(model_dir.parent / "state")},
            **(options or {}),
        })
        await k.startup()
        try:
            return await body(k)
        finally:
            await k.shutdown()

    return asyncio.run(main())


@pytest.fixture
def serve_models() -> Callable[..., Any]:
    return serve
