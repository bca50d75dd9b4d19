"""Fixtures of the plugin-level tests."""

from __future__ import annotations

import pytest
from core_support import REC_CONFTEST


@pytest.fixture
def rec_pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester with the recording driver's conftest in place."""
    pytester.makeconftest(REC_CONFTEST)
    return pytester
