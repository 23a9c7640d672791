"""Device and dtype resolution, in one place: what 'auto' means on this machine.

``resolve_device('auto')`` is CUDA when present, else the CPU. ``resolve_dtype('auto', device)`` is the fastest
forward dtype the device computes natively: bfloat16 on GPUs that support it (else float16) and on CPUs with
native bf16, float32 on other CPUs. Statistics and solver maths stay float32 whatever the forward dtype.
The device-dependent run sizes (calibration and evaluation windows) are ``CalibConfig.for_device`` /
``EvalConfig.for_device`` in ``pruning.config``; they ask ``is_accelerator`` here.
"""
from __future__ import annotations

import torch

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float16": torch.float16, "fp16": torch.float16}
_ALLOWED_DTYPES = "auto, float32, bfloat16, float16"


class DeviceError(InputError):
    """A device or dtype that is unknown or not available here; the message names the field and what is allowed."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:N' as given, checked for availability."""
    if isinstance(device, torch.device):
        dev = device
    elif device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(device))
        except (RuntimeError, TypeError, ValueError):
            raise DeviceError(f"device: {device!r} not allowed; allowed: {', '.join(DEVICE_CHOICES)}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device: {device!r} not allowed; allowed: {', '.join(DEVICE_CHOICES)}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device: {str(device)!r} requested but no CUDA device is available; allowed here: auto, cpu")
    return dev


def is_accelerator(device: str | torch.device | None = "auto") -> bool:
    """True when ``device`` resolves to a GPU (the paper-sized defaults apply there)."""
    if isinstance(device, str) and device.startswith("cuda"):
        return True  # sized for the GPU it names, even where it is not available (the run then says so)
    return resolve_device(device).type == "cuda"


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (avx512_bf16 or AMX). Without it, PyTorch emulates bf16
    matmuls and a forward is several times *slower* than in float32 (measured on a 2-core AVX2 EPYC: SmolLM2,
    512 tokens, 13.7 s in bf16 vs 2.3 s in fp32; on an avx512_bf16 EPYC bf16 was 2× faster than fp32).
    ``PRUNING_LAB_CPU_BF16=0|1`` overrides the answer (``pruning.settings``)."""
    from .settings import cpu_bf16_override

    forced = cpu_bf16_override()
    if forced is not None:
        return forced
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: ask oneDNN (true on CPUs where it runs bf16 kernels)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto") -> torch.dtype:
    """The forward dtype: a torch dtype, a name (float32/fp32, bfloat16/bf16, float16/fp16) or 'auto' (see the
    module docstring). Raises DeviceError naming ``dtype`` for anything else."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise DeviceError(f"dtype: {dtype} not allowed; allowed: {_ALLOWED_DTYPES}")
        return dtype
    key = "auto" if dtype is None else str(dtype).lower().replace("torch.", "")
    if key == "auto":
        dev = resolve_device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if key not in DTYPE_NAMES:
        raise DeviceError(f"dtype: {dtype!r} not allowed; allowed: {_ALLOWED_DTYPES}")
    return DTYPE_NAMES[key]


def device_key(device: str | torch.device | None = "auto") -> str:
    """The accelerator a run uses, as a queue key: 'cpu' or 'cuda:N' ('auto' and 'cuda' mean cuda:0 if present)."""
    dev = str(device) if device is not None else "auto"
    if dev == "cpu" or dev.startswith("cuda:"):
        return dev
    if dev == "cuda" or torch.cuda.is_available():
        return "cuda:0"
    return "cpu"
