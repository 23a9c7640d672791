"""CLI and run_job on a tiny model saved to disk (fast), and the real SmolLM2 end to end (slow)."""
import copy
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from pruning import events as ev
from pruning.config import CalibConfig, ConfigError, EvalConfig, PruneConfig
from pruning.models import save_pretrained, tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "llama"
    m, t = tiny_model("llama")
    save_pretrained(m, t, d)
    return str(d)


def small(model: str, **kw) -> PruneConfig:
    base = dict(model=model, calib=CalibConfig(source="pydoc", nsamples=4, seqlen=64), eval=EvalConfig(source="pydoc", windows=3, seqlen=64),
                device="cpu", dtype="float32", max_new_tokens=4, batch_size=2)
    return PruneConfig(**{**base, **kw})


def cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "pruning", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_run_job_report_and_events(tiny_dir):
    from pruning.api import run_job

    events = []
    r = run_job(small(tiny_dir, solver="sparsegpt", pattern="2:4"), on_event=events.append)
    for key in ("config", "perplexity", "sparsity", "layers", "timings", "generations"):
        assert key in r
    assert r["perplexity"]["dense"] > 1 and r["perplexity"]["pruned"] > 1
    assert r["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(r["layers"]) == 14 and {"block", "name", "rel_error", "sparsity", "seconds"} <= set(r["layers"][0])
    assert len(r["generations"]) == 2 and set(r["generations"][0]) == {"prompt", "dense", "pruned"}
    names = [type(e).__name__ for e in events]
    assert names.index("Evaluated") < names.index("JobStarted") < names.index("LayerSolved") < names.index("JobFinished")
    assert names[-1] == "JobFinished"
    json.dumps(r)  # plain data


def test_run_job_feeds_the_estimate(tiny_dir):
    from pruning import cost_model
    from pruning.api import estimate_seconds, get_model, run_job

    cost_model.reset_corrections()
    cfg = small(tiny_dir, solver="sparsegpt")
    get_model(tiny_dir, "cpu", "float32")
    first = estimate_seconds(cfg)  # the tiny model's own shapes (it is loaded), no correction yet
    r = run_job(cfg)
    after = estimate_seconds(cfg)
    measured = sum(r["timings"][k] for k in ("capture", "calibration_forward", "statistics", "solve", "propagate",
                                             "pruned_eval", "generate"))
    assert abs(after - 1 - measured) < abs(first - 1 - measured) or abs(after - 1 - measured) < 0.2 * measured
    cost_model.reset_corrections()


def test_run_job_never_touches_the_loaded_model(tiny_dir):
    from pruning.api import get_model, run_job

    model, _, _ = get_model(tiny_dir, "cpu", "float32")
    before = copy.deepcopy(model.state_dict())
    run_job(small(tiny_dir, solver="magnitude", sparsity=0.7))
    cancel = threading.Event()
    got = []

    def on_event(e):
        got.append(e)
        if isinstance(e, ev.LayerSolved):
            cancel.set()

    with pytest.raises(ev.Cancelled):
        run_job(small(tiny_dir, solver="wanda", sparsity=0.3), on_event=on_event, cancel=cancel)
    assert isinstance(got[-1], ev.JobCancelled)
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_cli_run_json_and_save(tiny_dir, tmp_path):
    out, save = tmp_path / "r.json", tmp_path / "pruned"
    p = cli("run", "--model", tiny_dir, "--solver", "wanda", "--sparsity", "0.6", "--calib", "pydoc", "--nsamples", "4",
            "--seqlen", "64", "--eval-windows", "3", "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "4",
            "--json", str(out), "--save", str(save))
    assert p.returncode == 0, p.stderr
    assert "perplexity  dense" in p.stdout and "achieved sparsity 59.99" in p.stdout  # ⌊0.6·numel⌋ per matrix
    assert "block   0 |" in p.stderr  # one line per block with each layer's error
    r = json.loads(out.read_text())
    assert r["config"]["solver"] == "wanda" and len(r["layers"]) == 14
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(save)
    w = m.model.layers[0].mlp.down_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=1e-3)


def test_cli_sweep_with_compositions_and_resume(tiny_dir, tmp_path):
    common = ["--model", tiny_dir, "--calib", "pydoc", "--nsamples", "4", "--seqlen", "64", "--eval-windows", "2",
              "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "2", "--quiet", "--json-dir", str(tmp_path / "runs")]
    env = {"PRUNING_LAB_CACHE": str(tmp_path / "cache")}
    args = ["sweep", "--solvers", "magnitude,wanda+sparsegpt", "--sparsities", "0.5", "--patterns", "unstructured,2:4", *common]
    p = cli(*args, env=env)
    assert p.returncode == 0, p.stderr
    assert "sweep: 4 runs" in p.stderr and "wanda+sparsegpt" in p.stdout
    files = sorted(f.name for f in (tmp_path / "runs").iterdir())
    assert files == ["magnitude_2of4_50.json", "magnitude_unstructured_50.json", "wanda-sparsegpt_2of4_50.json",
                     "wanda-sparsegpt_unstructured_50.json"]
    comp = json.loads((tmp_path / "runs" / "wanda-sparsegpt_2of4_50.json").read_text())
    assert comp["config"]["update"] == "sparsegpt" and comp["sparsity"] == pytest.approx(0.5, abs=1e-3)
    again = cli(*args, "--resume", env=env)
    assert again.returncode == 0 and again.stderr.count("reused") == 4, again.stderr
    assert json.loads((tmp_path / "runs" / "wanda-sparsegpt_2of4_50.json").read_text())["perplexity"] == comp["perplexity"]


@pytest.mark.parametrize("args,field", [
    (["--sparsity", "1.2"], "sparsity"), (["--pattern", "3:2"], "pattern"), (["--solver", "nope"], "solver"),
    (["--damping", "-1"], "damping"), (["--nsamples", "0"], "nsamples"), (["--update", "admm", "--solver", "sparsegpt"], "update"),
])
def test_cli_bad_input_names_field(args, field):
    p = cli("run", *args)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and field in p.stderr


def test_cli_bad_model_and_pattern_width(tiny_dir, tmp_path):
    p = cli("run", "--model", str(tmp_path / "missing"), "--device", "cpu")
    assert p.returncode == 2 and "model:" in p.stderr
    p = cli("run", "--model", tiny_dir, "--pattern", "3:5", "--calib", "pydoc", "--device", "cpu", "--nsamples", "2", "--seqlen", "32")
    assert p.returncode == 2 and "pattern: 3:5" in p.stderr


def test_calibration_too_small(tmp_path, tiny_dir):
    f = tmp_path / "short.txt"
    f.write_text("only a few words here")
    p = cli("run", "--model", tiny_dir, "--calib", str(f), "--device", "cpu", "--nsamples", "2", "--seqlen", "64")
    assert p.returncode == 2 and ("nsamples" in p.stderr or "seqlen" in p.stderr)


def test_config_key_is_stable_and_sensitive():
    a, b = PruneConfig(), PruneConfig()
    assert a.key() == b.key() and len(a.key()) == 20
    assert a.key() != PruneConfig(sparsity=0.6).key()
    assert PruneConfig(pattern="2:4", sparsity=0.3).key() == PruneConfig(pattern="2:4", sparsity=0.7).key()  # N:M fixes s
    assert PruneConfig.from_dict(a.to_dict()) == a
    with pytest.raises(ConfigError, match="dtype"):
        PruneConfig(dtype="int8")


@pytest.mark.slow
def test_real_model_perplexity_ordering_at_50_percent():
    """dense < SparseGPT ≈ Wanda < magnitude on SmolLM2 (small calibration, bf16 forwards)."""
    from pruning.api import run_job

    ppl = {}
    for solver in ("magnitude", "wanda", "sparsegpt"):
        cfg = PruneConfig(solver=solver, sparsity=0.5, pattern="per-row" if solver == "wanda" else "unstructured",
                          calib=CalibConfig(nsamples=8, seqlen=256), eval=EvalConfig(windows=8, seqlen=256), max_new_tokens=8)
        r = run_job(cfg)
        ppl[solver] = r["perplexity"]["pruned"]
        ppl["dense"] = r["perplexity"]["dense"]
        assert r["sparsity"] == pytest.approx(0.5, abs=1e-3)
    print("perplexity at 50%:", ppl)
    assert ppl["dense"] < ppl["sparsegpt"] < ppl["magnitude"]
    assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"]
    assert 0.67 < ppl["sparsegpt"] / ppl["wanda"] < 1.5  # the two are close at 50 % (within 50 %)
    assert ppl["magnitude"] > 2 * max(ppl["sparsegpt"], ppl["wanda"])
