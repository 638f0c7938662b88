"""Fixtures for codec tests (helpers live in ``codec_helpers``)."""

from __future__ import annotations

import pytest
from codec_helpers import tiny_dac, tiny_mock

from stemstream.codec import DAC, MockCodec


@pytest.fixture
def dac_tiny() -> DAC:
    return tiny_dac(causal=True)


@pytest.fixture
def mock_codec() -> MockCodec:
    return tiny_mock()


@pytest.fixture(params=["mock", "dac"])
def codec(request: pytest.FixtureRequest) -> MockCodec | DAC:
    """Each streamable codec in turn."""
    return tiny_mock() if request.param == "mock" else tiny_dac(causal=True)
