"""Converted Darknet models, cached on disk by the content of their files.

The key is the sha256 of the weights and the cfg (and the converter's version), so a
changed file is converted again and an unchanged one is converted once per cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("kernel.onnxruntime")


def darknet_onnx(weights: Path, cfg: Path, cache_dir: Path | None) -> str | bytes:
    """The ONNX model of a Darknet network: a file in `cache_dir`, or the serialised
    model itself when there is no cache directory."""
    from kernel_onnxruntime.darknet import CONVERTER_VERSION, convert

    weights_data, cfg_data = weights.read_bytes(), cfg.read_bytes()
    digest = hashlib.sha256(f"darknet-onnx {CONVERTER_VERSION}\0".encode())
    digest.update(weights_data)
    digest.update(b"\0")
    digest.update(cfg_data)
    target = cache_dir / f"{digest.hexdigest()}.onnx" if cache_dir else None
    if target is not None and target.is_file():
        return str(target)
    started = time.perf_counter()
    model = convert(cfg_data.decode("utf-8", errors="replace"), weights_data).SerializeToString()
    log.info("converted Darknet model %s to ONNX in %.2fs", weights, time.perf_counter() - started)
    if target is None:
        return model
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write aside and rename, so a concurrent loader never reads a half-written file.
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    partial.write_bytes(model)
    os.replace(partial, target)
    return str(target)
