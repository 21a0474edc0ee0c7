"""Model archives for the zoo tests: a small real ONNX classifier, well-formed archives
in DeGirum's layout, and malformed ones."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 3, 8, 8)
LABELS = {"0": "cat", "1": "dog", "2": "bird"}


def classifier_onnx(seed: int = 7) -> bytes:
    """Flatten -> MatMul -> Add -> Softmax over 3 classes, with fixed random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = (0.05 * rng.normal(size=(int(np.prod(INPUT_SHAPE[1:])), 3))).astype(np.float32)
    bias = rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by the client's ONNX Runtime 1.20
    onnx.checker.check_model(model)
    return model.SerializeToString()


def params(model: str, binary: bytes, ext: str = ".onnx") -> dict:
    """Model params a PySDK LOCAL engine runs on CPU with ONNX Runtime."""
    return {
        "ConfigVersion": 6,
        "Checksum": hashlib.sha256(binary).hexdigest(),
        "DEVICE": [{"DeviceType": "CPU", "RuntimeAgent": "ONNX"}],
        "PRE_PROCESS": [{"InputType": "Tensor", "InputShape": list(INPUT_SHAPE), "InputRawDataType": "DG_FLT"}],
        "MODEL_PARAMETERS": [{"ModelPath": f"{model}{ext}"}],
        "POST_PROCESS": [{"OutputPostprocessType": "Classification", "OutputTopK": 3,
                          "LabelsPath": f"labels_{model}.json"}],
    }


def zip_bytes(members: Iterable[tuple[str, bytes]], *, symlinks: Iterable[str] = (),
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of `(name, data)` members; names in `symlinks` are stored as symbolic links."""
    links = set(symlinks)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression) as z:
        warnings.simplefilter("ignore")  # duplicate names are made on purpose
        for name, data in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, data)
    return buffer.getvalue()


def model_members(model: str, binary: bytes | None = None, readme: str = "# A test model\n") -> list[tuple[str, bytes]]:
    binary = classifier_onnx() if binary is None else binary
    return [
        (f"{model}/{model}.json", json.dumps(params(model, binary)).encode()),
        (f"{model}/{model}.onnx", binary),
        (f"{model}/labels_{model}.json", json.dumps(LABELS).encode()),
        (f"{model}/README.md", readme.encode()),
    ]


def archive(model: str, binary: bytes | None = None, **kwargs) -> bytes:
    return zip_bytes(model_members(model, binary, **kwargs))


def write_archive(folder: Path, model: str, binary: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model}.zip"
    path.write_bytes(archive(model, binary))
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (but the uploads folder) with its contents."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file() and ".uploads" not in p.parts
    }



def _headers(data: bytes, member: str) -> Iterator[tuple[int, int]]:
    """Offsets of the flags and compression method of `member`, in its local header and in
    the central directory."""
    name = member.encode()
    for signature, name_length, name_at, flags, method in ((b"PK\x03\x04", 26, 30, 6, 8),
                                                            (b"PK\x01\x02", 28, 46, 8, 10)):
        at = data.find(signature)
        while at >= 0:
            length = int.from_bytes(data[at + name_length:at + name_length + 2], "little")
            if data[at + name_at:at + name_at + length] == name:
                yield at + flags, at + method
            at = data.find(signature, at + 4)


def with_method(data: bytes, member: str, method: int) -> bytes:
    """A stored archive whose `member` claims compression `method` (9: Deflate64)."""
    out = bytearray(data)
    for _, at in _headers(data, member):
        out[at:at + 2] = method.to_bytes(2, "little")
    return bytes(out)


def encrypted(data: bytes, member: str) -> bytes:
    """An archive whose `member` is flagged as encrypted."""
    out = bytearray(data)
    for at, _ in _headers(data, member):
        out[at] |= 0x1
    return bytes(out)


def damaged(data: bytes, inside: bytes) -> bytes:
    """A stored archive with a byte of `inside` (part of a member's data) changed, so that
    the member no longer matches its CRC."""
    out = bytearray(data)
    out[out.index(inside)] ^= 0x20
    return bytes(out)
