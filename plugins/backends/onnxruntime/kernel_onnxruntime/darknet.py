"""Darknet (`.cfg` + `.weights`) to ONNX, so onnxruntime runs the YOLO models that
OpenCV 5 no longer reads.

The graph takes `images` [N, 3, H, W] (RGB scaled to [0, 1], as Darknet expects) and
returns `output0` [N, boxes, 5 + classes], the YOLO heads decoded the way YOLOv5 exports
are: cx, cy, w, h in input pixels, objectness, then one score per class (all after the
sigmoid; multiply by objectness for a detection's confidence). Rows follow Darknet's own
order (head by head, then grid row, column, anchor), the order OpenCV's Darknet reader
uses too.

Sections read: [net], [convolutional] (batch_normalize, filters, size, stride, pad,
padding, groups, activation leaky|linear|logistic), [maxpool], [route] (with
groups/group_id), [upsample], [shortcut] and [yolo] (mask, anchors, classes,
scale_x_y). Anything else is a `DarknetError` naming the section.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import onnx

#: Bump when the graph this module builds changes, so cached conversions are redone.
CONVERTER_VERSION = "1"
OPSET = 13
INPUT, OUTPUT = "images", "output0"
#: Darknet adds this to sqrt(variance), not to the variance (its normalize_cpu).
BN_EPSILON = 1e-6
LEAKY_SLOPE = 0.1


class DarknetError(ValueError):
    """The cfg or weights file cannot be converted; the message says where and why."""


class Section(NamedTuple):
    kind: str
    options: dict[str, str]
    line: int

    def integer(self, key: str, default: int | None = None) -> int:
        return self._parse(key, self._get(key, default), int)

    def real(self, key: str, default: float | None = None) -> float:
        return self._parse(key, self._get(key, default), float)

    def integers(self, key: str) -> list[int]:
        return [self._parse(key, v, int) for v in str(self._get(key, None)).split(",") if v.strip()]

    def text(self, key: str, default: str) -> str:
        return self.options.get(key, default)

    def _parse(self, key: str, raw: object, kind: type) -> Any:
        try:
            return kind(raw)
        except ValueError:
            raise DarknetError(f"[{self.kind}] at cfg line {self.line}: {key}={raw!r} is not a number") from None

    def _get(self, key: str, default: object) -> object:
        value = self.options.get(key, default)
        if value is None:
            raise DarknetError(f"[{self.kind}] at cfg line {self.line} needs {key}=")
        return value


def parse_cfg(text: str) -> list[Section]:
    """The sections of a Darknet cfg, [net] first."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetError(f"cfg line {number}: unterminated section header {line!r}")
            sections.append(Section(line[1:-1].strip().lower(), {}, number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f"cfg line {number}: expected [section] or key=value, got {line!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError("the cfg does not start with a [net] section")
    return sections


class WeightsReader:
    """Darknet's weights file: a header, then float32 values in layer order."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 16:
            raise DarknetError(f"weights file too short for its header ({len(data)} bytes)")
        major, minor, _revision = struct.unpack_from("<3i", data)
        # The images-seen counter grew from 32 to 64 bits in format 0.2.
        header = 20 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else 16
        usable = (len(data) - header) // 4 * 4
        self._values = np.frombuffer(data, dtype="<f4", count=usable // 4, offset=header)
        self._at = 0

    def take(self, count: int, what: str) -> np.ndarray:
        end = self._at + count
        if end > self._values.size:
            raise DarknetError(
                f"weights file ends at value {self._values.size}, but {what} needs values "
                f"{self._at}..{end}: the weights do not match the cfg"
            )
        values, self._at = self._values[self._at:end], end
        return values.astype(np.float32)

    def finish(self) -> None:
        left = self._values.size - self._at
        if left:
            raise DarknetError(f"{left} weight values left over: the weights do not match the cfg")


class Tensor(NamedTuple):
    name: str
    channels: int
    height: int
    width: int


class _Builder:
    """Collects ONNX nodes and initializers with unique names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy = helper, numpy_helper
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self._name(hint)
        self.initializers.append(self._numpy.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, output: str | None = None, **attrs: object) -> str:
        out = output or self._name(hint)
        self.nodes.append(self._helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def convert(cfg_text: str, weights: bytes) -> onnx.ModelProto:
    """Build the ONNX model of a Darknet network (see the module docstring)."""
    from onnx import TensorProto, checker, helper

    sections = parse_cfg(cfg_text)
    net = sections[0]
    height, width, channels = net.integer("height"), net.integer("width"), net.integer("channels", 3)
    reader = WeightsReader(weights)
    g = _Builder()
    layers: list[Tensor] = []
    heads: list[str] = []
    current = Tensor(INPUT, channels, height, width)
    for index, section in enumerate(sections[1:]):
        where = f"[{section.kind}] at cfg line {section.line}"
        if section.kind in ("convolutional", "conv"):
            current = _conv(g, reader, section, current, where)
        elif section.kind == "maxpool":
            current = _maxpool(g, section, current)
        elif section.kind == "upsample":
            stride = section.integer("stride", 2)
            scales = g.const("scales", np.array([1, 1, stride, stride], np.float32))
            name = g.op("Resize", [current.name, "", scales], "upsample", mode="nearest",
                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            current = Tensor(name, current.channels, current.height * stride, current.width * stride)
        elif section.kind == "route":
            current = _route(g, section, layers, index, where)
        elif section.kind == "shortcut":
            other = layers[_layer_index(section.integer("from"), index, len(layers), where)]
            if (other.channels, other.height, other.width) != current[1:]:
                raise DarknetError(f"{where}: shortcut joins tensors of different shapes")
            if section.text("activation", "linear") != "linear":
                raise DarknetError(f"{where}: only linear shortcuts are supported")
            current = current._replace(name=g.op("Add", [current.name, other.name], "shortcut"))
        elif section.kind == "yolo":
            heads.append(_yolo(g, section, current, height, width, where))
        else:
            raise DarknetError(f"{where}: section [{section.kind}] is not supported")
        layers.append(current)
    reader.finish()
    if not heads:
        raise DarknetError("the cfg has no [yolo] section")
    g.op("Concat", heads, "detections", output=OUTPUT, axis=1)
    graph = helper.make_graph(
        g.nodes, "darknet",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", channels, height, width])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", "boxes", "attributes"])],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kernel-onnxruntime",
        producer_version=CONVERTER_VERSION,
    )
    model.ir_version = 8  # readable by older runtimes too
    checker.check_model(model)
    return model


def _layer_index(ref: int, index: int, count: int, where: str) -> int:
    """Darknet layer references: negative ones count back from the current layer."""
    target = index + ref if ref < 0 else ref
    if not 0 <= target < count:
        raise DarknetError(f"{where}: refers to layer {ref}, which does not exist")
    return target


def _activation(g: _Builder, name: str, kind: str, where: str) -> str:
    if kind == "leaky":
        return g.op("LeakyRelu", [name], "leaky", alpha=LEAKY_SLOPE)
    if kind == "logistic":
        return g.op("Sigmoid", [name], "logistic")
    if kind == "linear":
        return name
    raise DarknetError(f"{where}: activation {kind!r} is not supported")


def _conv(g: _Builder, reader: WeightsReader, s: Section, x: Tensor, where: str) -> Tensor:
    filters, size, stride = s.integer("filters"), s.integer("size", 1), s.integer("stride", 1)
    groups = s.integer("groups", 1)
    padding = size // 2 if s.integer("pad", 0) else s.integer("padding", 0)
    if x.channels % groups:
        raise DarknetError(f"{where}: {x.channels} channels do not split into {groups} groups")
    # The file's order per layer: biases, then batch-norm scales, means, variances, then weights.
    bias = reader.take(filters, f"{where} biases")
    weights_count = filters * (x.channels // groups) * size * size
    if s.integer("batch_normalize", 0):
        scale = reader.take(filters, f"{where} batch-norm scales")
        mean = reader.take(filters, f"{where} batch-norm means")
        variance = reader.take(filters, f"{where} batch-norm variances")
        weights = reader.take(weights_count, f"{where} weights")
        factor = scale / (np.sqrt(variance) + BN_EPSILON)
        weights = weights.reshape(filters, -1) * factor[:, None]
        bias = bias - mean * factor
    else:
        weights = reader.take(weights_count, f"{where} weights")
    w = g.const("conv_w", weights.reshape(filters, x.channels // groups, size, size).astype(np.float32))
    b = g.const("conv_b", bias.astype(np.float32))
    out = g.op("Conv", [x.name, w, b], "conv", kernel_shape=[size, size], strides=[stride, stride],
               pads=[padding] * 4, group=groups)
    out = _activation(g, out, s.text("activation", "logistic"), where)
    return Tensor(
        out, filters,
        (x.height + 2 * padding - size) // stride + 1,
        (x.width + 2 * padding - size) // stride + 1,
    )


def _maxpool(g: _Builder, s: Section, x: Tensor) -> Tensor:
    stride = s.integer("stride", 1)
    size = s.integer("size", stride)
    # Darknet pads size-1 in total, the odd one at the end, with values that never win.
    padding = s.integer("padding", size - 1)
    begin, end = padding // 2, padding - padding // 2
    out = g.op("MaxPool", [x.name], "maxpool", kernel_shape=[size, size], strides=[stride, stride],
               pads=[begin, begin, end, end])
    return Tensor(
        out, x.channels,
        (x.height + padding - size) // stride + 1,
        (x.width + padding - size) // stride + 1,
    )


def _route(g: _Builder, s: Section, layers: list[Tensor], index: int, where: str) -> Tensor:
    sources = [layers[_layer_index(ref, index, len(layers), where)] for ref in s.integers("layers")]
    if len({(t.height, t.width) for t in sources}) != 1:
        raise DarknetError(f"{where}: routed layers differ in height or width")
    groups, group_id = s.integer("groups", 1), s.integer("group_id", 0)
    parts = []
    for t in sources:
        if groups == 1:
            parts.append(t)
            continue
        step = t.channels // groups
        starts = g.const("starts", np.array([group_id * step], np.int64))
        ends = g.const("ends", np.array([(group_id + 1) * step], np.int64))
        axes = g.const("axes", np.array([1], np.int64))
        parts.append(t._replace(name=g.op("Slice", [t.name, starts, ends, axes], "group"), channels=step))
    name = parts[0].name if len(parts) == 1 else g.op("Concat", [t.name for t in parts], "route", axis=1)
    return Tensor(name, sum(t.channels for t in parts), parts[0].height, parts[0].width)


def _yolo(g: _Builder, s: Section, x: Tensor, net_height: int, net_width: int, where: str) -> str:
    """Decode one head into [N, rows * cols * anchors, 5 + classes]."""
    mask = s.integers("mask")
    pairs = np.array(s.integers("anchors"), np.float32).reshape(-1, 2)
    classes, scale_xy = s.integer("classes"), s.real("scale_x_y", 1.0)
    if s.integer("new_coords", 0):
        raise DarknetError(f"{where}: new_coords=1 is not supported")
    attributes, anchors = 5 + classes, len(mask)
    if x.channels != anchors * attributes:
        raise DarknetError(
            f"{where}: the layer before has {x.channels} channels, but {anchors} anchors of "
            f"{classes} classes need {anchors * attributes}"
        )
    rows, cols = x.height, x.width
    shape = g.const("shape", np.array([0, anchors, attributes, rows, cols], np.int64))
    t = g.op("Reshape", [x.name, shape], "yolo_split")
    t = g.op("Transpose", [t], "yolo_nhwc", perm=[0, 3, 4, 1, 2])
    flat = g.const("shape", np.array([0, rows * cols * anchors, attributes], np.int64))
    t = g.op("Reshape", [t, flat], "yolo_rows")

    def part(start: int, end: int) -> str:
        consts = [np.array([v], np.int64) for v in (start, end, 2)]
        return g.op("Slice", [t, *(g.const("slice", c) for c in consts)], "yolo_part")

    # Offsets and sizes in input pixels, laid out in the rows' order (row, col, anchor).
    stride = np.array([net_width / cols, net_height / rows], np.float32)
    ys, xs, _ = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(anchors), indexing="ij")
    grid = np.stack([xs, ys], axis=-1).reshape(1, -1, 2).astype(np.float32)
    offset = (grid - (scale_xy - 1) / 2) * stride
    sizes = np.tile(pairs[mask], (rows * cols, 1)).reshape(1, -1, 2)
    xy = g.op("Sigmoid", [part(0, 2)], "yolo_xy")
    xy = g.op("Mul", [xy, g.const("yolo_stride", (stride * scale_xy).astype(np.float32))], "yolo_xy")
    xy = g.op("Add", [xy, g.const("yolo_grid", offset.astype(np.float32))], "yolo_xy")
    wh = g.op("Exp", [part(2, 4)], "yolo_wh")
    wh = g.op("Mul", [wh, g.const("yolo_anchors", sizes.astype(np.float32))], "yolo_wh")
    scores = g.op("Sigmoid", [part(4, attributes)], "yolo_scores")
    return g.op("Concat", [xy, wh, scores], "yolo", axis=2)
