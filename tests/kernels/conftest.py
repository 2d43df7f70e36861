"""Fixtures of the kernel tests (the root conftest sets TRITON_INTERPRET before Triton is imported)."""

import pytest


@pytest.fixture
def interpreter_bf16(monkeypatch):
    """Under the Triton interpreter, repair its broken bf16 dot and casts for this test (bf16_shim.py);
    on a GPU, nothing. Returns the set of repaired operations."""
    import bf16_shim  # imported here: it needs Triton, which the eager tests in this folder do not

    return bf16_shim.patch(monkeypatch)
