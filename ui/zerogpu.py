"""ZeroGPU shim: ``spaces.GPU`` on Hugging Face ZeroGPU Spaces, a no-op decorator everywhere else.

Usage: ``@GPU`` or ``@GPU(duration=120)``. The ``spaces`` package is only present on Spaces.
"""
from __future__ import annotations

try:  # pragma: no cover - only on Hugging Face Spaces
    import spaces

    GPU = spaces.GPU
    ON_ZEROGPU = True
except ImportError:
    ON_ZEROGPU = False

    def GPU(fn=None, **_kwargs):  # noqa: N802 - mirrors spaces.GPU
        """No-op stand-in for ``spaces.GPU``: returns the function unchanged (with or without arguments)."""
        if callable(fn):
            return fn
        return lambda f: f
