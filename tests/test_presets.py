"""The "best" preset (pruning.presets): the lowest measured perplexity per setting, reachable with --preset best."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pruning.config import ConfigError
from pruning.presets import MEASURED, best_preset, preset_fields

ROOT = Path(__file__).resolve().parent.parent


def _setting(c: dict) -> tuple[str, float]:
    return (c["pattern"], 0.5) if ":" in c["pattern"] else (c["pattern"], round(float(c["sparsity"]), 4))


def test_best_is_the_lowest_shipped_perplexity_of_each_measured_setting():
    runs = json.loads((ROOT / "assets/precomputed/smollm2-135m.json").read_text())["runs"]
    for key, (solver, update, allocation, ppl, runner_up) in MEASURED.items():
        same = [r for r in runs if _setting(r["config"]) == key and r["config"]["calib"]["nsamples"] == 16]
        assert same, key
        best = min(same, key=lambda r: r["perplexity"]["pruned"])
        c = best["config"]
        assert (c["solver"], c["update"], c.get("allocation", "uniform")) == (solver, update, allocation), key
        assert best["perplexity"]["pruned"] == pytest.approx(ppl, abs=0.005)
        second = sorted(same, key=lambda r: r["perplexity"]["pruned"])[1]
        label = second["config"]["solver"] + ("+" + second["config"]["update"] if second["config"]["update"] != "none" else "")
        assert (label, round(second["perplexity"]["pruned"], 2)) == runner_up, key


def test_nearest_measured_setting_and_unknown_preset():
    assert best_preset("2:4")["measured_at"] == ("2:4", 0.5) and best_preset("4:8")["measured_at"] == ("2:4", 0.5)
    assert best_preset("unstructured", 0.55)["measured_at"] == ("unstructured", 0.5)  # a tie goes to the lower one
    assert best_preset("unstructured", 0.9)["measured_at"] == ("unstructured", 0.7)
    assert best_preset("per-row", 0.62)["measured_at"] == ("unstructured", 0.6)
    assert preset_fields("best", "unstructured", 0.7) == {"solver": "admm", "update": "none", "allocation": "uniform"}
    with pytest.raises(ConfigError, match="preset: unknown preset 'fast'; allowed: best"):
        preset_fields("fast", "unstructured", 0.5)


@pytest.mark.parametrize("flags,want", [
    (["--preset", "best", "--sparsity", "0.7"], ("admm", "none", "uniform", 0.7)),
    (["--preset", "best", "--solver", "wanda", "--update", "sparsegpt"], ("wanda", "sparsegpt", "uniform", 0.5)),
    (["--preset", "best", "--allocation=owl", "--sparsity", "0.6"], ("admm", "none", "owl", 0.6)),
    (["--sparsity", "0.6"], ("sparsegpt", "none", "uniform", 0.6)),  # no preset: the defaults
])
def test_cli_preset_best_fills_only_what_was_not_given(flags, want, monkeypatch, capsys):
    from pruning import __main__ as cli_main
    DEFAULTS = cli_main.DEFAULTS

    seen = {}

    class Stop(Exception):
        pass

    def capture(cfg, a, keep_model=False):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(cli_main, "_run_one", capture)
    with pytest.raises(Stop):
        cli_main.main(["run", "--device", "cpu", *flags])
    c = seen["cfg"]
    if "--preset" not in flags:
        want = (DEFAULTS.solver, DEFAULTS.update, DEFAULTS.allocation, 0.6)
    assert (c.solver, c.update, c.allocation, c.sparsity) == want
    err = capsys.readouterr().err
    assert ("preset best: admm, allocation uniform" in err) == ("--preset" in flags)


def test_app_best_button_fills_solver_update_allocation():
    from ui.prune import PruneTab

    assert PruneTab.best("2:4", 0.5) == ("admm", "none", "uniform")
    assert PruneTab.best("unstructured", 0.7) == tuple(preset_fields("best", "unstructured", 0.7).values())
    assert PruneTab.best("unstructured", None) == tuple(preset_fields("best", "unstructured", 0.5).values())
