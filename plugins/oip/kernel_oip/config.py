"""The `[oip]` config section: `--oip-<key>`, `KERNEL_OIP_<KEY>`."""

from __future__ import annotations

from typing import Annotated

import msgspec


class OipConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: gRPC port (8081 as aiSSEMBLE's default); 0 serves REST only.
    grpc_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8081
    #: Require a kernel JWT (REST `Authorization: Bearer`, gRPC `authorization` metadata).
    auth: bool = False
    #: A policy decision point asked about every authenticated call; None asks nobody.
    pdp_url: str | None = None
    #: Seconds to wait for the policy decision point before denying.
    pdp_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0

    def __post_init__(self) -> None:
        # The PDP is asked about a caller's token: without auth there is none to ask about,
        # and a server its operator believes guarded would serve everyone.
        if self.pdp_url is not None and not self.auth:
            raise ValueError("pdp_url (--oip-pdp-url) needs auth (--oip-auth): the policy decision point is "
                             "asked only about authenticated calls, and without auth every call is served")
