"""The Gradio app driven through gradio_client against a launched server on 127.0.0.1 (real engine).

The jobs run the real ``pruning.api.run_job`` on tiny random-init Llama checkpoints saved to a temp dir
(a local model path, exactly as a user would give one), so every test takes seconds. Also: plots from plain
records, controls generated from the registry, and the one-way import rule (no torch in ui/).
"""
from __future__ import annotations

import json
import math
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio_client import Client

from pruning import SOLVERS
from pruning.results import ResultStore
from pruning.config import PruneConfig
from pruning.models import save_pretrained, tiny_model
from pruning.solvers import Option, SolverOutput

ROOT = Path(__file__).resolve().parent.parent
P_PROGRESS, P_PLOT, P_LOG, P_METRICS, P_GENS, P_TABLE, P_REPORT, P_JOB = range(8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_cfg(model: str, **kw) -> dict:
    cfg = {"model": model, "solver": "wanda", "sparsity": 0.5, "calib": {"nsamples": 2, "seqlen": 64},
           "eval": {"windows": 2, "seqlen": 64}, "max_new_tokens": 4}
    cfg.update(kw)
    return cfg


def _state(out) -> str | None:
    m = re.search(r'data-state="(\w+)"', out[P_PROGRESS]) if isinstance(out[P_PROGRESS], str) else None
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from ui import build_app

    tmp = tmp_path_factory.mktemp("app")
    small = tmp / "tiny-llama"
    save_pretrained(*tiny_model("llama", seed=0), small)
    deep = tmp / "tiny-llama-8"  # 8 blocks, for a job long enough to cancel in the middle
    save_pretrained(*tiny_model("llama", seed=1, num_hidden_layers=8), deep)
    pre = tmp / "precomputed"
    pre.mkdir()
    (pre / "sweep.json").write_text(json.dumps([{
        "config": {"model": "smollm2-135m", "solver": "sparsegpt", "pattern": "unstructured", "sparsity": 0.5,
                   "calib": {"nsamples": 128, "seqlen": 2048}, "eval": {"windows": 0, "seqlen": 2048}},
        "key": "precomputed-demo", "model": {"id": "smollm2-135m", "fingerprint": "x", "n_blocks": 30, "n_params": 1},
        "perplexity": {"dense": 10.0, "pruned": 12.0}, "sparsity": 0.5,
        "layers": [{"block": 0, "name": "mlp.down_proj", "rel_error": 0.1, "sparsity": 0.5, "seconds": 0.1}],
        "timings": {"prune_total": 1.0}}]))
    store = ResultStore(tmp / "cache")
    demo = build_app(store=store, precomputed_dir=pre)  # the app's own JobRunner over run_job, as app.py runs it
    runner = demo.runner
    port = _free_port()
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", small=str(small), deep=str(deep), store=store, runner=runner,
                              demo=demo, tmp=tmp)
    finally:
        runner.shutdown()
        demo.close()


def test_prune_streams_then_returns_from_cache(app):
    client = Client(app.url, verbose=False)
    cfg = _tiny_cfg(app.small)
    outs = list(client.submit(cfg, api_name="/prune"))
    assert len(outs) >= 4, "expected several streamed updates"
    final = outs[-1]
    assert _state(final) == "done"
    intermediate = [o for o in outs[:-1] if _state(o) in ("starting", "queued", "running")]
    assert len(intermediate) >= 3
    titles = {re.search(r"font-weight:600;font-size:15px\">([^<]+)<", o[P_PROGRESS]).group(1) for o in intermediate}
    assert len(titles) >= 2, titles  # several phases were shown before the end
    report = final[P_REPORT]
    assert len(report["layers"]) == 2 * 7 and report["cached"] is False
    assert math.isfinite(report["perplexity"]["pruned"]) and report["perplexity"]["pruned"] > 0
    assert abs(report["sparsity"] - 0.5) < 0.01
    fig = json.loads(final[P_PLOT]["plot"])
    assert len(fig["data"]) == 7 and sum(len(t["y"]) for t in fig["data"]) == 14  # 7 projections × 2 blocks
    assert final[P_TABLE]["data"] and len(final[P_TABLE]["data"]) == 14
    assert "Dense" in final[P_GENS] and "Pruned" in final[P_GENS]
    assert final[P_JOB].startswith("job-")
    # the same config again: from the store, at once (stored before it was shown), without queueing or running
    assert app.store.get(report["key"], report["model"]["fingerprint"]) is not None
    again_outs = list(client.submit(cfg, api_name="/prune"))
    again = again_outs[-1]
    assert _state(again) == "done" and "from the cache" in again[P_PROGRESS]
    assert again[P_REPORT]["cached"] is True
    assert not [o for o in again_outs if _state(o) == "running"]  # no phase of a job was ever shown
    assert app.runner.get(again[P_JOB]).cached
    # issue 15.10: the Prune tab's estimate line says so for a stored configuration
    from ui.forms import parse_config

    prune = app.demo.pruning_lab.tabs["prune"]
    assert prune.estimate_text(parse_config(cfg)).startswith("In the cache: **instant**")
    other = prune.estimate_text(parse_config(_tiny_cfg(app.small, sparsity=0.3)))
    assert other.startswith("Estimated time") and "dense results are cached" not in other


def test_cancel_stops_running_job_and_next_job_works(app):
    owner, other = Client(app.url, verbose=False), Client(app.url, verbose=False)  # two browser tabs
    slow = _tiny_cfg(app.deep, solver="admm", options={"iters": 1000})  # long enough to still run when the cancel comes
    job = owner.submit(slow, api_name="/prune")
    cancelled_at, waiting = None, None
    for out in job:
        log = out[P_LOG] if isinstance(out[P_LOG], str) else ""
        if cancelled_at is None and " err " in log:  # at least one layer solved: the job is running
            # the other tab cannot cancel it, and its own job waits in line with its position shown
            assert other.predict("", api_name="/cancel").startswith("Nothing to cancel")
            waiting = other.submit(_tiny_cfg(app.small, solver="magnitude", sparsity=0.2), api_name="/prune")
            t = time.time()
            while not any(_state(o) == "queued" and "position 1 in the queue" in o[P_PROGRESS] for o in waiting.outputs()):
                assert time.time() - t < 30, "the second job never showed its queue position"
                time.sleep(0.2)
            msg = owner.predict("", api_name="/cancel")
            assert "Cancel requested for your job" in msg and "job-" not in msg  # issue 15.9: no internal job id
            cancelled_at = time.time()
    final = job.outputs()[-1]
    assert cancelled_at is not None, "the job finished before a layer was reported"
    assert _state(final) == "cancelled" and "untouched" in final[P_PROGRESS]
    assert time.time() - cancelled_at < 30
    assert app.store.get(PruneConfig.from_dict(slow).key()) is None  # nothing cached for a cancelled run
    t = time.time()
    while not waiting.done():
        assert time.time() - t < 60
        time.sleep(0.2)
    assert _state(waiting.outputs()[-1]) == "done"  # the other tab's job ran after the cancel, untouched by it
    nxt = owner.predict(_tiny_cfg(app.deep, solver="magnitude", sparsity=0.3), api_name="/prune")
    assert _state(nxt) == "done" and len(nxt[P_REPORT]["layers"]) == 8 * 7


@pytest.mark.parametrize("change, expected", [
    ({"sparsity": 1.2}, r"sparsity: 1\.2 is outside the allowed range \[0, 1\)"),
    ({"pattern": "1:3"}, r"^pattern: 1:3 needs every input width to be a multiple of 3"),  # widths 64/128
    ({"solver": "nope"}, r"solver: unknown solver 'nope'; allowed: .*wanda"),
    ({"options": {"blocksize": -4}, "solver": "sparsegpt"}, r"sparsegpt\.blocksize"),
])
def test_bad_input_gives_clear_message(app, change, expected):
    client = Client(app.url, verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(_tiny_cfg(app.small, **change), api_name="/prune")
    assert re.search(expected, str(err.value).strip()), str(err.value)


def test_lab_api(app):
    client = Client(app.url, verbose=False)
    out = client.predict(app.small, 1, "mlp.down_proj", 0.5, "unstructured", 2, 64, 5, 5, api_name="/lab")
    status, summary = out[0], out[8]
    assert "Block 1" in status and "mlp.down_proj" in status and "✓" in status
    assert set(summary["greedy"]) == {"magnitude", "wanda", "sparsegpt"}
    assert all(0 < g["rel_error"] < 1 for g in summary["greedy"].values())
    admm = summary["iterative"]
    assert all(v["iterations"] == 5 for v in admm.values()) and len(admm) == 2
    assert summary["sparsefw"]["rel_error"] > 0
    assert summary["greedy"]["sparsegpt"]["rel_error"] < summary["greedy"]["magnitude"]["rel_error"]
    err_fig = json.loads(out[1]["plot"])
    names = [t["name"].split(":")[0] for t in err_fig["data"]]
    assert names == ["ADMM (fixed Wanda mask)", "ADMM-Grad (gradual mask)", "magnitude", "wanda", "sparsegpt"]
    assert all(len(set(t["y"])) == 1 for t in err_fig["data"][2:])  # greedy errors: horizontal lines
    # a number box, checked by our code (never clamped, never Gradio's anonymous bound message)
    with pytest.raises(Exception, match=r"sparsity: 1\.2 is outside the allowed range \[0, 1\)"):
        client.predict(app.small, 1, "mlp.down_proj", 1.2, "unstructured", 2, 64, 5, 5, api_name="/lab")
    with pytest.raises(Exception, match=r"Calib windows \(nsamples\): 0 is out of range"):
        client.predict(app.small, 1, "mlp.down_proj", 0.5, "unstructured", 0, 64, 5, 5, api_name="/lab")
    with pytest.raises(Exception, match=r"pattern: 2:5 needs the input width to be a multiple of M=5"):
        client.predict(app.small, 1, "mlp.down_proj", 0.5, "2:5", 2, 64, 5, 5, api_name="/lab")
    with pytest.raises(Exception, match="projection"):
        client.predict(app.small, 1, "mlp.nope", 0.5, "unstructured", 2, 64, 5, 5, api_name="/lab")


def test_sweep_runs_table_and_estimate(app):
    client = Client(app.url, verbose=False)
    outs = list(client.submit(app.small, ["magnitude", "wanda", "sparsegpt"], ["unstructured", "2:4"], "0.3", 2, 64, 2, 64,
                              ["none", "admm"], api_name="/sweep"))
    status = outs[-1][0]
    # mask solvers × {none, admm}, sparsegpt only as it is: (2 × 2 + 1) × 2 patterns
    assert len(status["data"]) == 10 and all(str(r[-1]).startswith("done") for r in status["data"]), status["data"]
    assert sum(str(r[1]).endswith("+admm") for r in status["data"]) == 4
    assert len(outs) >= 2
    table, fig = client.predict("all models", True, api_name="/runs")[:2]
    cols = table["headers"]
    rows = [dict(zip(cols, r)) for r in table["data"]]
    assert any(r["source"] == "precomputed" for r in rows)
    mine = [r for r in rows if r["model"] == app.small and r["solver"] in ("magnitude", "wanda")]
    assert {(r["solver"], r["pattern"]) for r in mine} >= {("magnitude", "2:4"), ("wanda", "unstructured")}
    names = [t["name"] for t in json.loads(fig["plot"])["data"]]
    groups = {t.get("legendgroup") for t in json.loads(fig["plot"])["data"]}
    assert {"precomputed", "runs"} <= groups and any(n.startswith("wanda · 2:4") for n in names)
    assert client.predict(_tiny_cfg(app.small), api_name="/estimate") > 0
    with pytest.raises(Exception, match=r"Sparsities \(sparsities\): 'abc' is not a number"):
        client.predict(app.small, ["wanda"], ["unstructured"], "abc", 2, 64, 2, 64, ["none"], api_name="/sweep")
    with pytest.raises(Exception, match="nope.*not in the list of choices"):  # Gradio checks the choices itself
        client.predict(app.small, ["wanda"], ["unstructured"], "0.5", 2, 64, 2, 64, ["nope"], api_name="/sweep")


def test_first_use_of_a_model_is_said(app):
    """Issue 15.7: a model this server has not loaded yet: the bar says so while it loads (not 'checking the cache')."""
    fresh = app.tmp / "tiny-fresh"
    save_pretrained(*tiny_model("llama", seed=3), fresh)
    client = Client(app.url, verbose=False)
    outs = list(client.submit(_tiny_cfg(str(fresh), solver="magnitude"), api_name="/prune"))
    assert any("first use of this model in this server" in str(o[P_PROGRESS]) for o in outs[:3]), [o[P_PROGRESS] for o in outs[:3]]
    assert _state(outs[-1]) == "done"
    again = list(client.submit(_tiny_cfg(str(fresh), solver="magnitude", sparsity=0.3), api_name="/prune"))
    assert "first use" not in again[0][P_PROGRESS]  # loaded now


def test_job_failure_is_typed_and_clean(app):
    """A failure inside the job (not caught by the form's checks): the message without the exception's class name."""
    client = Client(app.url, verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(_tiny_cfg(app.small, calib={"source": "no-such-source", "nsamples": 2, "seqlen": 64}), api_name="/prune")
    import html

    text = html.unescape(str(err.value))  # escaped for the page's toast, which renders HTML
    assert "Text (calib.source): unknown source 'no-such-source'" in text and "DataError" not in text
    assert "text:<pasted text>, or a path" in text


# ------------------------------------------------------------------------------------------ no server needed
def test_ui_never_imports_torch_or_transformers():
    """No ui module imports torch or transformers itself (the engine's registry, which ``import ui`` loads, does
    import torch: see the next test for what is enforced at run time)."""
    for path in [*sorted((ROOT / "ui").glob("*.py")), ROOT / "app.py"]:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(torch|transformers)\b", text, re.M), path


def test_import_ui_loads_no_transformers_and_no_model():
    """``import ui`` (what a Space does first) must not import transformers, nor load or convert any model."""
    import subprocess
    import sys

    code = ("import sys, ui\n"
            "bad = sorted(m for m in sys.modules if m == 'transformers' or m.startswith('transformers.'))\n"
            "assert not bad, bad[:5]\n"
            "assert 'pruning.api' not in sys.modules and 'pruning.pipeline' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_controls_come_from_the_registry():
    import gradio as gr

    from ui.base import App
    from ui.prune import PruneTab

    def build_layout():
        with gr.Blocks() as demo:
            tab = PruneTab()
            tab.build(App(demo=demo, runner=None, store=None, precomputed_dir=None))
        tab.option_refs = tab.refs
        return tab

    def toy(problem, pattern, sparsity, opts, ctx):  # pragma: no cover - never run
        return SolverOutput(problem.W, problem.W != 0)

    SOLVERS.register("toy", kind="mask", needs_gram=False, summary="A toy solver.", paper="https://example.org",
                     options=(Option("knob", 3, "int", "a knob", min=0, max=9), Option("mode", "a", "choice", choices=("a", "b"))))(toy)
    try:
        c = build_layout()
        assert "toy" in [v for _, v in c.solver.choices]
        refs = [(r.owner, r.option.name) for r in c.option_refs]
        assert ("toy", "knob") in refs and ("toy", "mode") in refs
        assert "toy" in c.solver_groups and len(c.option_inputs) == len(c.option_refs)
        from ui.forms import config_from_form, FORM_FIELDS

        form = dict(zip(FORM_FIELDS, ["smollm2-135m", "toy", "unstructured", 0.5, "none", 2, 64, "wiki-sample", 2, 64,
                                      "cpu", "auto", "hi", 4]))
        values = [7 if (r.owner, r.option.name) == ("toy", "knob") else r.option.default for r in c.option_refs]
        cfg = config_from_form(form, values, c.option_refs)
        assert cfg.option_dict == {"knob": 7}  # only non-default options of the chosen solver: CLI-compatible keys
    finally:
        SOLVERS._specs.pop("toy", None)


def test_plots_from_plain_records():
    from ui import plots

    layers = [{"block": b, "name": n, "rel_error": 0.01 * (b + 1), "sparsity": 0.5, "seconds": 0.1}
              for b in range(3) for n in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj")]
    fig = plots.layer_error_figure(layers, n_blocks=30)
    assert [t.name for t in fig.data] == ["q_proj", "k_proj", "down_proj"]
    assert len({t.marker.color for t in fig.data}) == 3 and list(fig.data[0].x) == [0, 1, 2]
    assert tuple(fig.layout.xaxis.range) == (-0.5, 29.5) and fig.layout.barmode == "group"
    # the live chart is built without plotly's validation (speed): every property must still be valid, same JSON
    import plotly.graph_objects as go

    checked = go.Figure(fig.to_plotly_json())  # validated construction: raises on an invalid property or value
    assert json.loads(checked.to_json()) == json.loads(fig.to_json())
    assert fig.layout.template.layout.plot_bgcolor == "white"  # plotly_white resolved, not a bare name
    run = lambda solver, s, ppl, pre=False: {"config": {"solver": solver, "pattern": "unstructured", "update": "none"},  # noqa: E731
                                            "sparsity": s, "perplexity": {"dense": 10.0, "pruned": ppl}, "layers": layers,
                                            "precomputed": pre}
    runs = [run("wanda", 0.5, 20), run("wanda", 0.7, 60), run("sparsegpt", 0.5, 15), run("sparsegpt", 0.5, 16, True)]
    t = plots.tradeoff_figure(runs)
    names = sorted((tr.legendgroup, tr.name) for tr in t.data)  # precomputed results get their own legend group
    assert names == [("dense", "dense 10.00"), ("precomputed", "sparsegpt · unstructured"), ("runs", "sparsegpt · unstructured"),
                     ("runs", "wanda · unstructured")]
    assert not t.layout.annotations  # nothing placed in data units on the log axis
    wanda = next(tr for tr in t.data if tr.name == "wanda · unstructured")
    assert list(wanda.x) == [0.5, 0.7] and list(wanda.y) == [20, 60]
    pre = next(tr for tr in t.data if tr.legendgroup == "precomputed")
    assert pre.marker.symbol == "circle-open" and "(precomputed)" in pre.hovertemplate
    lo, hi = t.layout.xaxis.range  # the swept range with a margin, so close sparsities stay apart
    assert lo < 0.5 and hi > 0.7 and hi - lo < 0.4
    assert len(plots.overlay_figure(runs[0], runs[2]).data) == 2
    assert plots.tradeoff_figure([]).layout.annotations  # an explicit "no runs" message, not a blank axis


def test_compare_figures_mark_yours_and_show_cost():
    """Issue 15.12: yours filled with an outline and '(yours)' on hover, dense first in the legend, a cost view."""
    from ui import plots

    run = lambda solver, s, ppl, t, pre=False: {"config": {"solver": solver, "pattern": "unstructured", "update": "none"},  # noqa: E731
                                               "sparsity": s, "perplexity": {"dense": 10.0, "pruned": ppl},
                                               "timings": {"prune_total": t}, "precomputed": pre}
    runs = [run("wanda", 0.5, 20, 3.0), run("wanda", 0.5, 20, 4.0, True), run("sparsegpt", 0.5, 15, 30.0, True)]
    t = plots.tradeoff_figure(runs)
    assert t.data[0].legendgroup == "dense"  # heads the legend, never scrolled away
    mine = next(tr for tr in t.data if tr.legendgroup == "runs")
    assert mine.marker.symbol == "circle" and mine.marker.line.color and "(yours)" in mine.hovertemplate
    cost = plots.cost_figure(runs)
    pts = {(tr.legendgroup, tr.name): (list(tr.x), list(tr.y)) for tr in cost.data if tr.legendgroup != "dense"}
    assert pts[("runs", "wanda · unstructured")] == ([3.0], [20]) and pts[("precomputed", "sparsegpt · unstructured")] == ([30.0], [15])
    assert cost.layout.xaxis.type == "log" and "time spent pruning" in cost.layout.xaxis.title.text
    assert plots.cost_figure([run("wanda", 0.5, 20, None)]).layout.annotations  # no timings: a message
    assert plots.stable_color("newsolver") == plots.stable_color("newsolver") and plots.solver_color("wanda+admm") == plots.SOLVER_COLORS["wanda"]


def test_log_axes_have_full_tick_labels():
    """Issue 15.13: no bare '2' / '5' minor labels on log axes; plain titles."""
    from ui import plots

    short = plots.log_ticks([0.004, 0.07])
    assert short["ticktext"] == ["0.005", "0.01", "0.02", "0.05", "0.1"]
    long_ = plots.log_ticks([1, 1e6])
    assert len(long_["tickvals"]) <= 8 and all(t.startswith("1") for t in long_["ticktext"])
    assert plots.log_ticks([]) == {} and plots.log_ticks([0, float("nan")]) == {}


def test_timings_say_when_the_model_was_already_loaded():
    from ui import render

    html_ = render.timings_html({"load": 0.0, "end_to_end": 3.0})
    assert "already in memory" in html_
    assert "already in memory" not in render.timings_html({"load": 4.2, "end_to_end": 9.0})


def test_prune_allocation_kl_then_export_zip_loads(app, tmp_path):
    """Allocation owl + KL drift through /prune: the report has drift and per-layer targets; /export gives a zip
    with the model card and safetensors that transformers loads."""
    import zipfile

    from transformers import AutoModelForCausalLM

    app.demo.pruning_lab.exports_dir = tmp_path / "exports"
    client = Client(app.url, verbose=False)
    cfg = _tiny_cfg(app.small, allocation="owl", eval={"windows": 2, "seqlen": 64, "kl": True})
    out = client.predict(cfg, api_name="/prune")
    report = out[P_REPORT]
    assert report["config"]["allocation"] == "owl" and report["config"]["eval"]["kl"] is True
    assert set(report["drift"]) >= {"kl", "top1_agreement", "tokens"} and report["drift"]["kl"] >= 0
    assert all("target" in l for l in report["layers"]) and len({l["target"] for l in report["layers"]}) > 1
    assert "KL vs dense" in out[P_METRICS] and "top-1 agreement" in out[P_METRICS]
    assert any(t.get("yaxis") == "y2" for t in json.loads(out[P_PLOT]["plot"])["data"])  # the targets on the chart
    zpath, msg = client.predict(report, api_name="/export")
    assert report["run_id"] in msg
    # the re-run went through the device's queue as an export task (the worker process), not the request thread
    exports = [j for j in list(app.runner._jobs.values()) if j.task == "export"]
    assert exports and exports[-1].status == "done" and exports[-1].report.endswith(report["run_id"])
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        assert any(n.endswith("/README.md") for n in names) and any(n.endswith("/model.safetensors") for n in names)
        z.extractall(tmp_path / "unzipped")
    folder = next((tmp_path / "unzipped").iterdir())
    model = AutoModelForCausalLM.from_pretrained(folder)
    w = model.model.layers[0].mlp.up_proj.weight
    assert 0.2 < float((w == 0).float().mean()) < 0.8  # pruned zeros survive the round trip
    with pytest.raises(Exception, match="no finished run to export"):
        client.predict({"config": cfg}, api_name="/export")


def test_about_says_what_sparsity_buys(app):
    from ui.about import SPARSITY_BUYS, sparse_measurement_md

    assert "no smaller" in SPARSITY_BUYS and "2:4" in SPARSITY_BUYS and "semi-structured" in SPARSITY_BUYS
    assert "bench-sparse" in sparse_measurement_md()
    page = app.demo.config
    texts = [c.get("props", {}).get("value", "") for c in page["components"]]
    assert any(isinstance(t, str) and "What sparsity buys" in t for t in texts)


def test_compare_columns_and_export_of_a_precomputed_run(app):
    """Compare: run id / zero-shot acc / KL columns; exporting a precomputed run made on other weights is refused
    with a message naming the fingerprint (no traceback)."""
    client = Client(app.url, verbose=False)
    table = client.predict("all models", True, api_name="/runs")[0]
    assert {"run id", "zero-shot acc", "KL"} <= set(table["headers"])
    fig = client.predict("all models", True, "zero-shot accuracy", api_name="/tradeoff")
    assert "zero-shot" in fig["plot"].lower()
    with pytest.raises(Exception, match="fingerprint"):
        client.predict("pre:sweep.json:precomputed-demo", api_name="/export_run")
    with pytest.raises(Exception, match="pick a run to export"):
        client.predict(None, api_name="/export_run")


def test_zeroshot_and_drift_from_plain_records():
    """The metrics cards, the Compare columns and the accuracy trade-off read zero-shot / KL from a report."""
    from ui import plots, render
    from ui.compare import runs_frame

    rep = {"config": {"model": "m", "solver": "wanda", "pattern": "unstructured", "sparsity": 0.5}, "sparsity": 0.5,
           "perplexity": {"dense": 10.0, "pruned": 12.0}, "layers": [], "run_id": "abc",
           "zeroshot": {"wiki-lastword": {"dense": {"acc": 0.42}, "pruned": {"acc": 0.31}}},
           "drift": {"kl": 0.125, "top1_agreement": 0.8, "tokens": 128}}
    html = render.metrics_html(rep)
    assert "31.0%" in html and "dense 42.0%" in html and "0.1250" in html and "top-1 agreement 80.0%" in html
    row = runs_frame([rep]).iloc[0]
    assert row["zero-shot acc"] == 0.31 and row["KL"] == 0.125 and row["run id"]
    fig = plots.tradeoff_figure([rep, {**rep, "zeroshot": {}}], y="zeroshot")
    assert [list(t.y) for t in fig.data if t.type == "scatter"] == [[0.31]]  # only the run that measured it
