"""Small run configs and the CLI runner shared by the CLI, API and export tests (tiny model saved to disk)."""
import os
import subprocess
import sys
from pathlib import Path

from pruning.config import CalibConfig, EvalConfig, PruneConfig

ROOT = Path(__file__).resolve().parent.parent


def small(model: str, **kw) -> PruneConfig:
    """A config that runs in about a second on the tiny model: 4 × 64 calibration, 3 × 64 evaluation, CPU fp32."""
    base = dict(model=model, calib=CalibConfig(source="pydoc", nsamples=4, seqlen=64),
                eval=EvalConfig(source="pydoc", windows=3, seqlen=64), device="cpu", dtype="float32",
                max_new_tokens=4, batch_size=2)
    return PruneConfig(**{**base, **kw})


def cli(*args, timeout=300, env=None):
    """``python -m pruning ARGS`` from the checkout, offline; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "pruning", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
