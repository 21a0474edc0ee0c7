"""What the tritonclient scripts beside this one print: arrays and errors as JSON values.

Imported by those scripts (their folder is first on `sys.path` when they run), inside
tritonclient's own environment."""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException


def array(a: np.ndarray) -> dict[str, Any]:
    data = [x.decode() if isinstance(x, bytes) else x for x in a.reshape(-1)] if a.dtype == object else a.reshape(-1).tolist()
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": data}


def error(call) -> dict[str, Any]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return {"status": "no error"}
