"""ui.forms: form values -> PruneConfig, messages in the page's words, defaults from the engine, sweep expansion."""
from __future__ import annotations

import pytest

from pruning import SOLVERS, UPDATES
from pruning.config import CalibConfig, ConfigError, EvalConfig, PruneConfig
from ui import forms


def _form(**kw):
    d = PruneConfig()
    form = {"model": d.model, "solver": d.solver, "pattern": d.pattern, "sparsity": d.sparsity, "update": "none",
            "nsamples": 2, "seqlen": 64, "calib_source": "wiki-sample", "eval_windows": 2, "eval_seqlen": 64,
            "device": "cpu", "dtype": "auto", "prompts": "hi", "max_new_tokens": 4}
    form.update(kw)
    return form


def _cfg(**kw):
    refs = forms.option_refs()
    return forms.config_from_form(_form(**kw), [r.option.default for r in refs], refs)


def test_defaults_come_from_the_engine():
    assert forms.DEFAULT_SOLVER == PruneConfig().solver
    assert forms.CALIB_DEFAULTS == CalibConfig() and forms.EVAL_DEFAULTS == EvalConfig()
    assert forms.pattern_choices()[:2] == ["unstructured", "per-row"] and "2:4" in forms.pattern_choices()
    assert "wiki-sample" in forms.calib_sources()
    assert set(forms.mask_solvers()) == {s.name for s in SOLVERS if s.kind == "mask"}
    assert {r.owner for r in forms.option_refs() if r.kind == "update"} <= set(UPDATES.names())


@pytest.mark.parametrize("value", [1.2, -0.3])
def test_sparsity_out_of_range_is_refused_not_clamped(value):
    with pytest.raises(ConfigError, match=rf"^sparsity: {value} is outside the allowed range \[0, 1\)$"):
        _cfg(sparsity=value)


@pytest.mark.parametrize("field, value, expected", [
    ("nsamples", 0, r"^Calibration windows \(nsamples\): 0 is out of range; allowed: 1\.\."),
    ("seqlen", 4, r"^Tokens per window \(seqlen\): 4 is out of range"),
    ("eval_windows", -1, r"^Eval windows \(0 = all\) \(eval_windows\): -1 is out of range"),
    ("nsamples", None, r"^Calibration windows: empty; enter a whole number"),
    ("sparsity", None, r"^Sparsity: empty; enter a number in \[0, 1\)"),
    ("max_new_tokens", 2.5, r"^New tokens \(max_new_tokens\): expected an integer, got 2\.5"),
])
def test_messages_name_the_field_as_the_page_shows_it(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        _cfg(**{field: value})


def test_only_non_default_options_of_the_chosen_solver_are_kept():
    refs = forms.option_refs()
    values = [r.option.default for r in refs]
    i = next(i for i, r in enumerate(refs) if (r.owner, r.option.name) == ("sparsegpt", "blocksize"))
    values[i] = 64
    j = next(i for i, r in enumerate(refs) if r.owner == "admm")
    values[j] = refs[j].option.default + 1 if refs[j].option.type in ("int", "float") else values[j]
    cfg = forms.config_from_form(_form(solver="sparsegpt"), values, refs)
    assert cfg.option_dict == {"blocksize": 64}  # admm's changed control is not the chosen solver's
    assert cfg.key() == PruneConfig.from_dict(dict(cfg.to_dict())).key()
    values[i] = 64.5
    with pytest.raises(ConfigError, match=r"sparsegpt\.blocksize: expected a int, got 64\.5"):
        forms.config_from_form(_form(solver="sparsegpt"), values, refs)


def test_parse_config_messages():
    with pytest.raises(ConfigError, match="not valid JSON"):
        forms.parse_config("{nope")
    with pytest.raises(ConfigError, match="allowed fields: model, solver"):
        forms.parse_config({"solvr": "wanda"})
    assert forms.parse_config('{"solver": "wanda", "sparsity": 0.3}').sparsity == 0.3


def test_relabel_keeps_messages_whose_field_reads_the_same():
    assert forms.relabel("sparsity: 1.2 is outside", forms.PRUNE_LABELS) == "sparsity: 1.2 is outside"
    assert forms.relabel("seqlen: 4 is out of range", {"seqlen": "Tokens"}) == "Tokens (seqlen): 4 is out of range"
    assert forms.relabel("no field here", forms.PRUNE_LABELS) == "no field here"


def test_sparsities_parse():
    assert forms.parse_sparsities("0.3, 0.5;70") == [0.3, 0.5, 0.7]
    with pytest.raises(ConfigError, match=r"Sparsities \(sparsities\): 'x' is not a number"):
        forms.parse_sparsities("0.3, x")
    with pytest.raises(ConfigError, match="empty"):
        forms.parse_sparsities("  ")


def test_sweep_expansion():
    cfgs = forms.sweep_from_form("smollm2-135m", ["magnitude", "sparsegpt"], ["unstructured", "2:4"], "0.3, 0.5", 2, 64, 2, 64,
                                 ["none", "admm"])
    # magnitude × {none, admm} × (unstructured × 2 sparsities + 2:4 once, N:M fixes it) + sparsegpt × 3
    assert len(cfgs) == 2 * 3 + 3 and len({c.key() for c in cfgs}) == len(cfgs)
    assert sum(c.update == "admm" for c in cfgs) == 3 and all(c.update == "none" for c in cfgs if c.solver == "sparsegpt")
    assert {c.calib.nsamples for c in cfgs} == {2} and {c.eval.seqlen for c in cfgs} == {64}
    base = PruneConfig(calib=CalibConfig(nsamples=2, seqlen=64))
    assert [c.key() for c in forms.sweep_configs(base, ["wanda"], [0.5], ["2:4", "2:4"])] == \
        [base.replace(solver="wanda", pattern="2:4", sparsity=0.5).key()]
    with pytest.raises(ConfigError, match="Solvers: pick at least one"):
        forms.sweep_from_form("m", [], ["unstructured"], "0.5", 2, 64, 2, 64)
    with pytest.raises(ConfigError, match=r"Calib windows: empty"):
        forms.sweep_from_form("m", ["wanda"], ["unstructured"], "0.5", None, 64, 2, 64)
    with pytest.raises(ConfigError, match=r"at most 48"):
        forms.sweep_from_form("m", ["magnitude", "wanda"], ["unstructured"], ",".join(str(i / 100) for i in range(1, 30)), 2, 64, 2, 64)


def test_app_sizes_follow_the_device(monkeypatch):
    """A monkeypatched device probe: on CUDA the form and an API call get the papers' sizes, on a CPU the interactive
    default; sizes given explicitly always win."""
    import torch

    from pruning.config import GPU_SIZES, INTERACTIVE_SIZES

    cpu = forms.size_defaults("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = forms.size_defaults("auto")
    assert gpu == {"nsamples": GPU_SIZES[0], "seqlen": GPU_SIZES[1], "eval_windows": 0, "eval_seqlen": GPU_SIZES[1]}
    cfg = forms.parse_config({"solver": "wanda"})  # what gradio_client sends when it leaves the sizes out
    assert (cfg.calib.nsamples, cfg.calib.seqlen, cfg.eval.windows, cfg.eval.seqlen) == (128, 2048, 0, 2048)
    assert forms.parse_config({"solver": "wanda", "device": "cpu"}).calib.nsamples == INTERACTIVE_SIZES[0]
    given = forms.parse_config({"calib": {"nsamples": 4, "seqlen": 64}, "eval": {"windows": 2, "seqlen": 64}})
    assert (given.calib.nsamples, given.calib.seqlen, given.eval.windows, given.eval.seqlen) == (4, 64, 2, 64)
    assert given.batch_size > 1  # forwards batched
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert forms.size_defaults("auto") == cpu == {"nsamples": INTERACTIVE_SIZES[0], "seqlen": INTERACTIVE_SIZES[1],
                                                  "eval_windows": INTERACTIVE_SIZES[2], "eval_seqlen": INTERACTIVE_SIZES[1]}
    # CPU: the engine's defaults except the sizes, which are the app's interactive ones (smaller than the CLI's)
    assert forms.parse_config({"solver": "wanda"}) == PruneConfig(
        solver="wanda", calib=CalibConfig(nsamples=INTERACTIVE_SIZES[0], seqlen=INTERACTIVE_SIZES[1]),
        eval=EvalConfig(windows=INTERACTIVE_SIZES[2], seqlen=INTERACTIVE_SIZES[1]))
    with pytest.raises(ConfigError, match="device"):
        forms.parse_config({"device": "tpu"})


def test_size_presets_are_the_engine_sizes():
    from pruning.config import CPU_SIZES, GPU_SIZES, INTERACTIVE_SIZES

    presets = list(forms.size_presets().values())
    i = INTERACTIVE_SIZES
    assert presets[0] == {"nsamples": i[0], "seqlen": i[1], "eval_windows": i[2], "eval_seqlen": i[1]} == forms.size_defaults("cpu")
    assert presets[1] == {"nsamples": CPU_SIZES[0], "seqlen": CPU_SIZES[1], "eval_windows": CPU_SIZES[2], "eval_seqlen": CPU_SIZES[1]}
    assert presets[2] == {"nsamples": GPU_SIZES[0], "seqlen": GPU_SIZES[1], "eval_windows": GPU_SIZES[2], "eval_seqlen": GPU_SIZES[1]}
    for p, device in zip(presets, ("cpu", "cpu", "cuda")):  # every preset is a valid config on the device it is sized for
        forms.parse_config({"device": device, "calib": {"nsamples": p["nsamples"], "seqlen": p["seqlen"]},
                            "eval": {"windows": p["eval_windows"], "seqlen": p["eval_seqlen"]}})
    # the paper's size on a CPU server is over the visitor limit there: refused, naming the limit and its variable
    with pytest.raises(ConfigError, match="PRUNING_LAB_MAX_CALIB_TOKENS"):
        forms.parse_config({"device": "cpu", "calib": {"nsamples": presets[2]["nsamples"], "seqlen": presets[2]["seqlen"]}})
