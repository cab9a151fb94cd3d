"""The ``nat_lab`` fixture: a started NatLab (network namespaces with NAT routers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.nat.lab import NatLab, lab_available


@pytest.fixture(scope="module")
def nat_lab() -> Iterator[NatLab]:
    """A started NatLab shared by the tests of one module; skips when the lab cannot run
    here (not root, no ``ip``/``nft``, no network namespaces). Removed at module end."""
    reason = lab_available()
    if reason is not None:
        pytest.skip(f"NAT lab unavailable: {reason}")
    lab = NatLab()
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()
