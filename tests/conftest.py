"""Shared pytest fixtures. Plain helpers and constants (data locations, skip markers, synthetic
ZTF-shaped containers, references) are in :mod:`tests.helpers`; import them from there."""

from __future__ import annotations

import pytest

from tests.helpers import REAL, real_containers


@pytest.fixture(scope="session")
def real() -> list[tuple[str, bytes]]:
    if not REAL.is_dir():
        pytest.skip(f"real ZTF alerts not found at {REAL} (set STAMPFLOW_DATA)")
    return real_containers()
