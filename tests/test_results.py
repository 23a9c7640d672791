"""ResultStore: plain data only, keyed by config key + model fingerprint, survives a reopen; precomputed loader."""
import json

import pytest

from pruning.results import ResultStore, load_precomputed, run_key
from pruning.config import PruneConfig


def _report(cfg: PruneConfig, fingerprint="fp-a", ppl=20.0):
    return {
        "config": cfg.to_dict(), "key": cfg.key(),
        "model": {"id": cfg.model, "fingerprint": fingerprint, "n_blocks": 2, "n_params": 10},
        "perplexity": {"dense": 10.0, "pruned": ppl}, "sparsity": cfg.sparsity,
        "layers": [{"block": 0, "name": "mlp.down_proj", "rel_error": 0.1, "sparsity": 0.5, "seconds": 0.01}],
        "timings": {"prune": 1.0}, "generations": [], "device": "cpu", "dtype": "float32", "warnings": [],
    }


def test_put_get_by_key_and_fingerprint(tmp_path):
    store = ResultStore(tmp_path)
    cfg = PruneConfig(solver="wanda", sparsity=0.5)
    key = store.put(_report(cfg, "fp-a", 21.0))
    assert key == run_key(cfg.key(), "fp-a")
    assert store.get(cfg.key(), "fp-a")["perplexity"]["pruned"] == 21.0
    assert store.get(cfg.key(), "fp-other") is None  # another model version never matches
    assert store.get(cfg.key())["model"]["fingerprint"] == "fp-a"  # unknown fingerprint: latest
    assert store.get(PruneConfig(solver="wanda", sparsity=0.6).key()) is None
    store.put(_report(cfg, "fp-b", 30.0))
    assert store.get(cfg.key())["perplexity"]["pruned"] == 30.0
    assert len(store) == 2 and len(store.list_runs()) == 2


def test_survives_reopen_and_rejects_non_plain(tmp_path):
    cfg = PruneConfig(solver="magnitude", sparsity=0.3)
    ResultStore(tmp_path).put(_report(cfg))
    again = ResultStore(tmp_path)  # a restart
    got = again.get(cfg.key(), "fp-a")
    assert got is not None and got["sparsity"] == pytest.approx(0.3) and "stored_at" in got
    bad = _report(cfg)
    bad["layers"] = [object()]
    with pytest.raises(TypeError):
        again.put(bad)


def test_load_precomputed(tmp_path):
    cfg = PruneConfig(solver="sparsegpt", pattern="2:4")
    (tmp_path / "one.json").write_text(json.dumps(_report(cfg)))
    (tmp_path / "many.json").write_text(json.dumps({"runs": [_report(cfg, ppl=p) for p in (11.0, 12.0)]}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty.json").write_text("[]")
    runs, problems = load_precomputed(tmp_path)
    assert len(runs) == 3 and all(r["precomputed"] for r in runs)
    assert sorted(p.split(":")[0] for p in problems) == ["broken.json", "empty.json"]
    assert load_precomputed(tmp_path / "missing") == ([], [])
