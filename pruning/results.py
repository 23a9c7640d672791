"""Disk store of finished runs (diskcache), keyed by ``PruneConfig.key()`` + the model's fingerprint.

Values are plain data only -- the report dict of ``pruning.api.run_job`` (numbers, strings, lists, dicts),
never tensors or figures; the UI rebuilds its figures from these records. A report is stored *before* it is
shown, so the same configuration again returns at once, also after a restart or for a second visitor.

Layout of the store (one diskcache directory):

* ``run:<config key>:<fingerprint>`` -> report dict (plus ``stored_at``, seconds since the epoch, and
  ``result_schema``); from ``RESULT_SCHEMA`` 2 on the key reads ``run:v<schema>:<config key>:<fingerprint>``, so
  reports of an older schema are never returned (schema 1 keeps the key it always had: stores filled before the
  constant existed stay valid)
* ``latest:<config key>``            -> fingerprint of the most recent report for that config

The key covers every option of the config (``PruneConfig.key``), the model's fingerprint and the result schema;
a stored report is returned only if its own ``key`` and fingerprint match the ones asked for. A damaged entry
(unreadable, truncated, not a report) is a miss and is deleted, so the run is recomputed; a store that cannot be
opened or written (read-only folder, full disk) raises ``StoreError`` on ``put`` (the job runner reports "result
not cached" and shows the result) and reads as empty.

The directory is ``<cache root>/results``: ``$PRUNING_LAB_CACHE/results`` if that variable is set, else
``~/.cache/pruning-lab/results`` (``pruning.settings.cache_dir``).

Precomputed reports (``assets/precomputed/*.json``, same report format; one report, a list of reports or
``{"runs": [...]}`` per file) are read by :func:`load_precomputed` and marked ``"precomputed": True``.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

import diskcache

from .errors import PruningError
from .settings import cache_dir

log = logging.getLogger(__name__)
_RUN = "run:"
_LATEST = "latest:"
RESULT_SCHEMA = 1  # bump when a report's meaning changes: older stored reports then no longer match any key


class StoreError(PruningError, OSError):
    """The result store could not be opened or written (the message says why and where)."""


def default_dir() -> Path:
    """``<cache root>/results``: the root is ``$PRUNING_LAB_CACHE`` if set, else ``~/.cache/pruning-lab``."""
    return cache_dir() / "results"


def _plain(value):
    """JSON round trip: proves the value is plain data (raises TypeError otherwise) and detaches it."""
    return json.loads(json.dumps(value, allow_nan=True))


def run_key(config_key: str, fingerprint: str | None, schema: int = RESULT_SCHEMA) -> str:
    schema_part = "" if schema == 1 else f"v{schema}:"
    return f"{_RUN}{schema_part}{config_key}:{fingerprint or 'unknown'}"


def run_id_of(report: dict) -> str:
    """The run id shown in the Compare table and written as ``run_id`` in every report: ``<config key>-<fp[:8]>``."""
    if report.get("run_id"):
        return str(report["run_id"])
    fp = (report.get("model") or {}).get("fingerprint") or "unknown"
    return f"{report.get('key', '')}-{str(fp)[:8]}"



class ResultStore:
    """Finished runs on disk. Thread-safe and process-safe (diskcache uses SQLite)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory))
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"result store: cannot open {str(self.directory)!r} ({e}); results are not cached") from e

    def _read(self, key: str):
        """The value under ``key``, or None; an unreadable entry is logged, deleted and read as missing."""
        try:
            return self._cache.get(key)
        except (OSError, sqlite3.Error, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
                KeyError, UnicodeError) + _UNPICKLING as e:
            log.warning("result store: entry %s unreadable (%s: %s); it is dropped and recomputed", key, type(e).__name__, e)
            try:
                self._cache.delete(key)
            except (OSError, sqlite3.Error):
                pass
            return None

    # -- write -------------------------------------------------------------------------------------
    def put(self, report: dict) -> str:
        """Store a report; returns its store key. The report must carry ``key`` and ``model.fingerprint``.

        Raises TypeError if the report is not plain data, KeyError if ``key`` is missing.
        """
        rep = _plain(report)
        config_key = rep["key"]
        fingerprint = (rep.get("model") or {}).get("fingerprint")
        rep.pop("cached", None)
        rep.pop("precomputed", None)
        rep["stored_at"] = time.time()
        if not rep.get("run_id"):
            rep["run_id"] = run_id_of(rep)
        rep["result_schema"] = RESULT_SCHEMA
        key = run_key(config_key, fingerprint)
        try:
            with self._cache.transact():
                self._cache.set(key, rep)
                self._cache.set(_LATEST + config_key, fingerprint or "unknown")
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"result store: could not write to {str(self.directory)!r} ({e})") from e
        return key

    # -- read --------------------------------------------------------------------------------------
    def get(self, config_key: str, fingerprint: str | None = None) -> dict | None:
        """The stored report for this config, or None.

        With a fingerprint, only a report of exactly that model matches. Without one (the model's
        fingerprint is unknown before loading it), the most recently stored report for the config is returned.
        """
        fp = fingerprint or self._read(_LATEST + config_key)
        if not isinstance(fp, str):
            return None
        key = run_key(config_key, fp)
        rep = self._read(key)
        if rep is None:
            return None
        if not (isinstance(rep, dict) and rep.get("key") == config_key and is_report(rep)
                and ((rep.get("model") or {}).get("fingerprint") or "unknown") == fp
                and rep.get("result_schema", 1) == RESULT_SCHEMA):
            log.warning("result store: entry %s does not hold the report asked for; it is dropped and recomputed", key)
            self.delete(key)
            return None
        return dict(rep)

    def list_runs(self) -> list[dict]:
        """Every stored report, oldest first."""
        runs = []
        try:
            keys = list(self._cache.iterkeys())
        except (OSError, sqlite3.Error) as e:
            log.warning("result store: cannot list %s (%s)", self.directory, e)
            return []
        for k in keys:
            if isinstance(k, str) and k.startswith(_RUN):
                rep = self._read(k)
                if isinstance(rep, dict) and is_report(rep) and rep.get("result_schema", 1) == RESULT_SCHEMA:
                    runs.append(dict(rep, store_key=k))
        runs.sort(key=lambda r: r.get("stored_at", 0.0))
        return runs

    def delete(self, store_key: str) -> bool:
        try:
            return bool(self._cache.delete(store_key))
        except (OSError, sqlite3.Error):
            return False

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self._cache.close()

    def __len__(self) -> int:
        return sum(1 for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(_RUN))


import pickle  # noqa: E402

_UNPICKLING = (pickle.UnpicklingError,)


def _reports_in(obj) -> Iterable[dict]:
    if isinstance(obj, dict) and "runs" in obj and isinstance(obj["runs"], list):
        yield from (r for r in obj["runs"] if isinstance(r, dict))
    elif isinstance(obj, dict):
        yield obj
    elif isinstance(obj, list):
        yield from (r for r in obj if isinstance(r, dict))


def is_report(rep: dict) -> bool:
    """The minimum the app needs from a report: a config, a key and a pruned perplexity or per-layer errors."""
    return isinstance(rep.get("config"), dict) and "key" in rep and ("perplexity" in rep or "layers" in rep)


def load_precomputed(directory: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Read ``<directory>/*.json`` reports. Returns (reports marked ``precomputed``, problems found).

    A file that is not valid JSON or holds no report is skipped and named in the problems list.
    """
    d = Path(directory)
    runs, problems = [], []
    if not d.is_dir():
        return runs, problems
    for path in sorted(d.glob("*.json")):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            problems.append(f"{path.name}: {e}")
            continue
        found = [r for r in _reports_in(obj) if is_report(r)]
        if not found:
            problems.append(f"{path.name}: no report (needs 'config', 'key' and 'perplexity' or 'layers')")
        for r in found:
            runs.append(dict(r, precomputed=True, source_file=path.name))
    return runs, problems


def store_report(report: dict, directory: str | os.PathLike | None = None) -> str:
    """Store one report in the default store (the CLI's ``run`` and ``sweep`` call this)."""
    store = ResultStore(directory)
    try:
        return store.put(report)
    finally:
        store.close()
