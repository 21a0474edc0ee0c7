"""Fixtures shared by the detect tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.detect.detect_support import FrameServer


@pytest.fixture(scope="module")
def portal(images: dict[str, bytes]) -> Iterator[FrameServer]:
    """A frame server (a ZoneMinder portal) on loopback for the module's `images`."""
    server = FrameServer(images, slow=3.0)
    yield server
    server.close()
