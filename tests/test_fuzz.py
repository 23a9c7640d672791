"""Input validation proven by generated inputs (issue 14 §2).

Fast, in-process (run by default): ``/prune`` config dicts as the endpoint receives them, CLI argument lists,
``prune_layer`` shapes / dtypes / options, the lab's and the sweep's inputs, text sources (empty, huge, binary,
non-UTF-8). Every invalid input is refused with a message that names the field and says what is allowed
(``_gen.check_refusal``); a valid one runs.

``fuzz`` marker: the same config generator through gradio_client against the launched app on a tiny model,
``PRUNING_LAB_FUZZ_N`` configs (default 200; 1000 for the record), 0 server errors and 0 tracebacks.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import socket
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from _gen import JUNK, check_refusal, prune_configs, valid_cheap_config
from pruning.config import ConfigError, PruneConfig
from pruning.settings import fuzz_examples
from ui.forms import parse_config, parse_sparsities, sweep_from_form

FAST = hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)


# -- /prune config dicts ------------------------------------------------------------------------------------------
@FAST
@given(prune_configs("/nonexistent/tiny-model"))
def test_prune_configs_are_refused_with_the_field_or_accepted(d):
    try:
        cfg = parse_config(d)
    except ConfigError as e:
        check_refusal(str(e))
        return
    assert isinstance(cfg, PruneConfig)
    assert PruneConfig.from_dict(cfg.to_dict()).key() == cfg.key()  # what was accepted is canonical and round-trips
    assert 0 <= cfg.sparsity < 1 and cfg.calib.nsamples >= 1 and all(isinstance(p, str) for p in cfg.prompts)


@hsettings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.data())
def test_valid_generated_configs_run(tiny_dir, data):
    from pruning.api import run_job

    cfg = parse_config(data.draw(valid_cheap_config(tiny_dir)))
    rep = run_job(cfg)
    assert rep["key"] == cfg.key() and math.isfinite(rep["perplexity"]["pruned"])
    assert abs(rep["sparsity"] - cfg.sparsity) < 0.05


# -- CLI argument lists -------------------------------------------------------------------------------------------
BAD_FLAGS = st.sampled_from([
    ("--sparsity", "1.5"), ("--sparsity", "nan"), ("--sparsity", "-0.1"), ("--solver", "nope"), ("--pattern", "3:2"),
    ("--pattern", "x"), ("--update", "bogus"), ("--nsamples", "0"), ("--seqlen", "2"), ("--device", "tpu"),
    ("--dtype", "int8"), ("--batch-size", "0"), ("--max-new-tokens", "-1"), ("--eval-windows", "-2"),
    ("--calib", ""), ("--zeroshot-limit", "-1"), ("--owl-lambda", "nan"),
])
OK_FLAGS = st.sampled_from([("--solver", "wanda"), ("--sparsity", "0.5"), ("--pattern", "2:4"), ("--nsamples", "2"),
                            ("--seqlen", "32"), ("--device", "cpu"), ("--dtype", "float32"), ("--quiet",)])


@hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(OK_FLAGS, max_size=3), st.lists(BAD_FLAGS, min_size=1, max_size=2), st.booleans())
def test_cli_refuses_bad_arguments_naming_the_flag(tiny_dir, ok, bad, sweep):
    from pruning.__main__ import main

    args = ["sweep" if sweep else "run", "--model", tiny_dir]
    for flags in ok + bad:
        many = {"--solver": "--solvers", "--sparsity": "--sparsities", "--pattern": "--patterns", "--update": "--updates"}
        if sweep and flags[0] in many:
            flags = (many[flags[0]], *flags[1:])
        args += list(flags)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(args)
        except SystemExit as e:  # argparse: a value of the wrong type
            rc = e.code
    text = err.getvalue()
    assert rc == 2, (args, rc, text, out.getvalue()[-500:])
    assert "Traceback" not in text
    if text.startswith("error: "):
        check_refusal(text[len("error: "):].strip())
    else:
        assert "usage:" in text and "invalid" in text, text  # argparse names the flag and the expected type


# -- prune_layer: shapes, dtypes, options --------------------------------------------------------------------------
@FAST
@given(st.integers(1, 12), st.integers(1, 16), st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
       st.sampled_from(["magnitude", "wanda", "sparsegpt", "ria", "admm", "bogus"]),
       st.one_of(st.sampled_from(["unstructured", "per-row", "2:4", "1:3", "x"]), JUNK),
       st.one_of(st.floats(-0.5, 1.5), JUNK), st.sampled_from(["ok", "wrong-shape", "nan", "none", "1d"]),
       st.dictionaries(st.sampled_from(["iters", "blocksize", "percdamp", "bogus", "rho"]),
                       st.one_of(st.integers(-3, 50), st.floats(allow_nan=True), st.text(max_size=3)), max_size=2),
       st.integers(0, 3))
def test_prune_layer_refuses_bad_inputs_or_returns_a_valid_layer(d_out, d_in, dtype, solver, pattern, sparsity, gram_kind,
                                                                 options, seed):
    from pruning import prune_layer

    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g).to(dtype)
    X = torch.randn(d_in, 3 * d_in, generator=g)
    G = {"ok": X @ X.T, "wrong-shape": torch.eye(d_in + 1), "nan": torch.full((d_in, d_in), float("nan")), "none": None,
         "1d": torch.ones(d_in)}[gram_kind]
    if solver == "admm":
        options = {**options, "iters": options.get("iters", 3)} if isinstance(options.get("iters", 3), int) else options
    W0 = W.clone()
    try:
        sol = prune_layer(W, G, 3 * d_in, solver=solver, sparsity=sparsity, pattern=pattern, **options)
    except (ValueError, TypeError) as e:  # SolverError / PatternError are ValueErrors
        assert isinstance(e, ValueError), f"{type(e).__name__}: {e}"
        check_refusal(str(e))
    else:
        assert torch.isfinite(sol.weight).all() and sol.weight.shape == (d_out, d_in)
        assert not (sol.weight[~sol.mask] != 0).any()
    assert torch.equal(W, W0)  # the caller's tensor is never modified


# -- the lab's and the sweep's inputs ------------------------------------------------------------------------------
@FAST
@given(st.one_of(st.floats(allow_nan=True), JUNK), st.one_of(st.integers(-5, 10**6), JUNK),
       st.one_of(st.integers(-5, 10**6), JUNK), st.one_of(st.integers(-5, 5000), JUNK), st.one_of(st.integers(-5, 5000), JUNK))
def test_lab_inputs_are_refused_with_the_field(sparsity, nsamples, seqlen, admm_iters, fw_iters):
    from ui.lab_tab import LabTab

    try:
        LabTab._check(sparsity, nsamples, seqlen, admm_iters, fw_iters)
    except ConfigError as e:
        check_refusal(str(e))


def test_lab_run_refuses_bad_block_projection_and_pattern(tiny_dir):
    from pruning.lab import run_lab

    for kw, field in (({"block": 0, "name": "nope"}, "projection"), ({"block": 99, "name": "mlp.down_proj"}, "block"),
                      ({"block": 0, "name": "mlp.down_proj", "pattern": "1:3"}, "pattern"),
                      ({"block": 0, "name": "mlp.down_proj", "sparsity": 1.5}, "sparsity")):
        with pytest.raises(ValueError) as e:
            run_lab(tiny_dir, nsamples=2, seqlen=16, device="cpu", dtype="float32", **kw)
        check_refusal(str(e.value))
        assert str(e.value).startswith(field), str(e.value)


@FAST
@given(st.lists(st.sampled_from(["magnitude", "wanda", "sparsegpt", "wanda+admm", "admm+admm", "bogus", ""]), max_size=3),
       st.lists(st.sampled_from(["unstructured", "2:4", "1:3", "x"]), max_size=2),
       st.one_of(st.text(max_size=30), st.lists(st.floats(allow_nan=True), max_size=4), st.just("0.3, 0.5"),
                 st.just(",".join(str(i / 1000) for i in range(1, 999)))),
       st.one_of(st.integers(-3, 10**6), st.none()), st.one_of(st.integers(-3, 10**6), st.none()),
       st.lists(st.sampled_from(["none", "admm", "bogus"]), max_size=2))
def test_sweep_inputs_are_refused_with_the_field(solvers, patterns, sparsities, nsamples, seqlen, updates):
    try:
        cfgs = sweep_from_form("smollm2-135m", solvers, patterns, sparsities, nsamples, seqlen, 2, 64, updates)
    except ConfigError as e:
        check_refusal(str(e))
    else:
        assert 1 <= len(cfgs) <= 48 and len({c.key() for c in cfgs}) == len(cfgs)


# -- text inputs: empty, huge, binary, non-UTF-8 -------------------------------------------------------------------
def _texts(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 50)
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "huge.txt").write_text("word " * 600_000)
    return {"latin1": str(tmp_path / "latin1.txt"), "binary": str(tmp_path / "binary.bin"),
            "empty": str(tmp_path / "empty.txt"), "huge": str(tmp_path / "huge.txt"), "dir": str(tmp_path)}


@pytest.mark.parametrize("which", ["latin1", "binary", "empty", "dir", "pasted-empty", "pasted-huge", "pasted-binary",
                                   "nul", "missing"])
def test_text_sources_are_refused_with_the_field(tmp_path, which):
    from pruning.api import check_text_source

    files = _texts(tmp_path)
    source = {"pasted-empty": "text:   ", "pasted-huge": "text:" + "word " * 600_000,
              "pasted-binary": "text:" + bytes(range(1, 32)).decode("ascii") * 3, "nul": "\x00\x01",
              "missing": str(tmp_path / "nope.txt")}.get(which) or files[which]
    cfg = PruneConfig.from_dict({"calib": {"source": source}, "eval": {"source": source}})
    from pruning.config import check_visitor

    try:
        check_visitor(cfg, {})
        check_text_source(source, "calib")
    except ValueError as e:
        msg = str(e)
        check_refusal(msg)
        assert msg.startswith(("calib", "Text")), msg
        if which in ("pasted-huge",):
            assert "PRUNING_LAB_MAX_TEXT_CHARS" in msg
        return
    assert which in ("pasted-binary",), f"{which} was accepted"  # control characters are text: accepted as is


@FAST
@given(st.one_of(st.text(max_size=20), st.lists(JUNK, max_size=3), JUNK))
def test_sparsity_lists_are_parsed_or_refused(text):
    try:
        out = parse_sparsities(text)
    except ConfigError as e:
        check_refusal(str(e))
    else:
        assert out and all(isinstance(s, float) for s in out)


# -- the launched app, through gradio_client (fuzz marker) ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.fuzz
def test_fuzz_prune_endpoint_of_the_launched_app(tmp_path_factory):
    """PRUNING_LAB_FUZZ_N generated configs to /prune: every one ends as a finished job or a refusal naming the field;
    0 server errors, 0 tracebacks, and the app still serves the page and a valid job at the end."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError



    from pruning.models import save_pretrained, tiny_model
    from pruning.results import ResultStore
    from ui import build_app

    n = fuzz_examples(200)
    tmp = tmp_path_factory.mktemp("fuzz")
    model = tmp / "tiny"
    save_pretrained(*tiny_model("llama", seed=0, num_hidden_layers=1), model)
    demo = build_app(store=ResultStore(tmp / "store"), precomputed_dir=None)
    port = _free_port()
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                                   quiet=True)
    url = f"http://127.0.0.1:{port}/"
    client = Client(url, verbose=False)
    configs = [_json_safe(c) for c in _draw(prune_configs(str(model)), n)]
    counts = {"done": 0, "refused": 0, "server_errors": 0, "tracebacks": 0}
    problems = []
    t0 = time.monotonic()
    try:
        for cfg in configs:
            try:
                out = client.predict(cfg, api_name="/prune")
            except AppError as e:
                msg = str(e)
                if re.search(r"Traceback|File \"", msg):
                    counts["tracebacks"] += 1
                    problems.append((cfg, msg[:400]))
                    continue
                try:
                    check_refusal(_plain(msg))
                except AssertionError as a:
                    counts["server_errors"] += 1
                    problems.append((cfg, f"{a}"[:400]))
                    continue
                counts["refused"] += 1
            except Exception as e:  # noqa: BLE001 -- anything else is a server error
                counts["server_errors"] += 1
                problems.append((cfg, f"{type(e).__name__}: {e}"[:400]))
            else:
                state = re.search(r'data-state="(\w+)"', out[0] or "")
                if not state or state.group(1) != "done" or "Traceback" in str(out):
                    counts["server_errors"] += 1
                    problems.append((cfg, str(out[0])[:400]))
                else:
                    counts["done"] += 1
        import urllib.request

        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200
    finally:
        demo.runner.shutdown()
        demo.close()
    print(f"\nfuzz /prune: {n} configs in {time.monotonic() - t0:.0f} s: {counts}")
    assert not problems, f"{len(problems)} of {n} configs failed badly: {problems[:5]}"
    assert counts["done"] >= 1 and counts["refused"] >= n // 4, counts


def _json_safe(value):
    """What a JSON client can send: NaN / ±inf become the strings a browser would put there ('NaN', 'Infinity')."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _plain(message: str) -> str:
    """gr.Error text escapes < > &: the message as the visitor reads it."""
    import html

    return html.unescape(message)


def _draw(strategy, n: int) -> list:
    """``n`` examples of ``strategy``, reproducible (seeded), without a hypothesis test around them."""
    out = []

    @hsettings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out[:n]
