"""Disk store of finished runs (diskcache), keyed by ``PruneConfig.key()`` + the model's fingerprint.

Values are plain data only -- the report dict of ``pruning.api.run_job`` (numbers, strings, lists, dicts),
never tensors or figures; the UI rebuilds its figures from these records. A report is stored *before* it is
shown, so the same configuration again returns at once, also after a restart or for a second visitor.

Layout of the store (one diskcache directory):

* ``run:<config key>:<fingerprint>`` -> report dict (plus ``stored_at``, seconds since the epoch)
* ``latest:<config key>``            -> fingerprint of the most recent report for that config

The directory is ``<cache root>/results``: ``$PRUNING_LAB_CACHE/results`` if that variable is set, else
``~/.cache/pruning-lab/results`` (``pruning.settings.cache_dir``).

Precomputed reports (``assets/precomputed/*.json``, same report format; one report, a list of reports or
``{"runs": [...]}`` per file) are read by :func:`load_precomputed` and marked ``"precomputed": True``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable

import diskcache

from .settings import cache_dir
_RUN = "run:"
_LATEST = "latest:"


def default_dir() -> Path:
    """``<cache root>/results``: the root is ``$PRUNING_LAB_CACHE`` if set, else ``~/.cache/pruning-lab``."""
    return cache_dir() / "results"


def _plain(value):
    """JSON round trip: proves the value is plain data (raises TypeError otherwise) and detaches it."""
    return json.loads(json.dumps(value, allow_nan=True))


def run_key(config_key: str, fingerprint: str | None) -> str:
    return f"{_RUN}{config_key}:{fingerprint or 'unknown'}"


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
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory))

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
        key = run_key(config_key, fingerprint)
        with self._cache.transact():
            self._cache.set(key, rep)
            self._cache.set(_LATEST + config_key, fingerprint or "unknown")
        return key

    # -- read --------------------------------------------------------------------------------------
    def get(self, config_key: str, fingerprint: str | None = None) -> dict | None:
        """The stored report for this config, or None.

        With a fingerprint, only a report of exactly that model matches. Without one (the model's
        fingerprint is unknown before loading it), the most recently stored report for the config is returned.
        """
        fp = fingerprint or self._cache.get(_LATEST + config_key)
        if fp is None:
            return None
        rep = self._cache.get(run_key(config_key, fp))
        return dict(rep) if rep is not None else None

    def list_runs(self) -> list[dict]:
        """Every stored report, oldest first."""
        runs = []
        for k in list(self._cache.iterkeys()):
            if isinstance(k, str) and k.startswith(_RUN):
                rep = self._cache.get(k)
                if rep is not None:
                    runs.append(dict(rep, store_key=k))
        runs.sort(key=lambda r: r.get("stored_at", 0.0))
        return runs

    def delete(self, store_key: str) -> bool:
        return bool(self._cache.delete(store_key))

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self._cache.close()

    def __len__(self) -> int:
        return sum(1 for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(_RUN))


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
