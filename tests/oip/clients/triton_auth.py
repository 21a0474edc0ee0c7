"""tritonclient against a server with `--oip-auth`: `python triton_auth.py HTTP GRPC GOOD WRONG_SCOPE`.

Prints JSON: per case, "ok" or the status the client raised.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def outcome(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status())
    return "ok"


def main() -> None:
    http_addr, grpc_addr, good, wrong = sys.argv[1:5]
    x = np.ones((1, 4), np.float32)
    results = {}
    for kind, module, addr in (("http", httpclient, http_addr), ("grpc", grpcclient, grpc_addr)):
        client = module.InferenceServerClient(addr)
        key = "Authorization" if kind == "http" else "authorization"

        def infer(model, token, client=client, module=module, key=key):
            tensor = module.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(x)
            headers = {key: f"Bearer {token}"} if token else None
            return client.infer(model, [tensor], headers=headers)

        results[kind] = {
            "live_without_token": client.is_server_live(),
            "no_token": outcome(lambda: infer("affine", None)),
            "forged": outcome(lambda: infer("affine", good[:-4] + "AAAA")),
            "wrong_scope": outcome(lambda: infer("affine", wrong)),
            "good": outcome(lambda: infer("affine", good)),
            "pdp_denies": outcome(lambda: infer("versioned", good)),
            "pdp_silent": outcome(lambda: infer("kinds", good)),
            "metadata_wrong_scope": outcome(
                lambda c=client, k=key: c.get_model_metadata("affine", headers={k: f"Bearer {wrong}"})),
            "unload_needs_repository_scope": outcome(
                lambda c=client, k=key: c.unload_model("affine", headers={k: f"Bearer {wrong}"})),
        }
        client.close()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
