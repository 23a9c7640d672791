"""Serving publicly (issue 14 §6): which models and text files a visitor may name, the per-visitor limits, the
memory check before a job, and which files the launched app serves (assets only: never /etc/passwd, never ``..``).
"""
from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pruning import settings
from pruning.config import ConfigError, PruneConfig, check_job_memory, check_visitor
from pruning.models import ModelError, check_public_model, count_params_from_config, save_pretrained, tiny_model
from ui.forms import parse_config

ROOT = Path(__file__).resolve().parent.parent


def _public(tmp_path, **extra) -> dict:
    env = {"PRUNING_LAB_PUBLIC": "1", "HF_HUB_OFFLINE": "1", "PRUNING_LAB_MODEL_DIRS": str(tmp_path / "models"),
           "PRUNING_LAB_TEXT_DIRS": str(tmp_path / "texts")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pub")
    inside = root / "models" / "tiny"
    save_pretrained(*tiny_model("llama", seed=0), inside)
    outside = root / "elsewhere" / "tiny"
    save_pretrained(*tiny_model("llama", seed=0), outside)
    (root / "texts").mkdir()
    (root / "texts" / "ok.txt").write_text("some text. " * 100)
    (root / "secret.txt").write_text("not for visitors")
    (root / "models" / "escape").symlink_to(outside, target_is_directory=True)  # a link out of the allowed folder
    return root


def test_public_mode_switches():
    assert not settings.public_mode({})
    assert settings.public_mode({"PRUNING_LAB_PUBLIC": "1"}) and settings.public_mode({"SPACE_ID": "me/space"})
    assert not settings.public_mode({"SPACE_ID": "me/space", "PRUNING_LAB_PUBLIC": "0"})
    assert settings.allowed_models({"PRUNING_LAB_ALLOWED_MODELS": " gpt2, org/m ,gpt2,"}) == ("gpt2", "org/m")
    assert settings.max_model_params({}) == settings.DEFAULT_MAX_MODEL_PARAMS
    with pytest.raises(ValueError, match="PRUNING_LAB_MAX_MODEL_PARAMS: 'lots' is not a parameter count; allowed"):
        settings.max_model_params({"PRUNING_LAB_MAX_MODEL_PARAMS": "lots"})


def test_public_models_embedded_allowed_dirs_and_nothing_else(model_dirs):
    env = _public(model_dirs)
    check_public_model("smollm2-135m", env)  # embedded: always
    check_public_model(str(model_dirs / "models" / "tiny"), env)  # under PRUNING_LAB_MODEL_DIRS
    refused = [str(model_dirs / "elsewhere" / "tiny"),  # a real checkpoint, outside the allowed folders
               str(model_dirs / "models" / ".." / "elsewhere" / "tiny"),  # traversal
               str(model_dirs / "models" / "escape"),  # symlink out
               "/etc", "../../../../etc", "~", "HuggingFaceTB/SmolLM2-1.7B", "gpt2", "", "\x00"]
    for name in refused:
        with pytest.raises(ModelError) as e:
            check_public_model(name, env)
        msg = str(e.value)
        assert msg.startswith("model: ") and "allowed" in msg and "smollm2-135m" in msg, msg
    # the same through the app's parser: the page shows the refusal, in the field's words
    with pytest.raises(ConfigError, match=r"^model: .* is not allowed on this public server; allowed: "):
        old = dict(os.environ)
        os.environ.update(env)
        try:
            parse_config({"model": str(model_dirs / "elsewhere" / "tiny")})
        finally:
            os.environ.clear()
            os.environ.update(old)


def test_public_hub_allow_list_and_size_cap(model_dirs):
    tiny = str(model_dirs / "models" / "tiny")
    n = count_params_from_config(tiny)
    m, _ = tiny_model("llama", seed=0)
    assert n == sum(p.numel() for p in m.parameters())  # counted on the meta device, exactly
    with pytest.raises(ModelError, match=rf"has {n:,} parameters, over this server's limit of 1,000 "
                                         r"\(PRUNING_LAB_MAX_MODEL_PARAMS\)"):
        check_public_model(tiny, _public(model_dirs, PRUNING_LAB_MAX_MODEL_PARAMS="1000"))
    # an allow-listed hub id that is not in the local cache (no network here): refused with the loader's reason
    env = _public(model_dirs, PRUNING_LAB_ALLOWED_MODELS="someorg/not-cached-model")
    with pytest.raises(ModelError, match=r"^model: could not read the configuration of 'someorg/not-cached-model'"):
        check_public_model("someorg/not-cached-model", env)
    with pytest.raises(ModelError, match=r"someorg/other' is not allowed on this public server; allowed: .*someorg/not-cached"):
        check_public_model("someorg/other", env)


def test_public_text_files_only_under_text_dirs(model_dirs):
    env = _public(model_dirs)
    ok = PruneConfig().replace(calib=PruneConfig().calib.__class__(source=str(model_dirs / "texts" / "ok.txt")))
    check_visitor(ok, env)
    for src in (str(model_dirs / "secret.txt"), "/etc/passwd", str(model_dirs / "texts" / ".." / "secret.txt"),
                "file:/etc/passwd", "wikitext2:/etc", "c4:/etc/passwd"):
        cfg = PruneConfig.from_dict({"calib": {"source": src}})
        with pytest.raises(ConfigError, match=r"^calib: text files are not served on this public server outside "
                                              r"PRUNING_LAB_TEXT_DIRS .*; allowed: wiki-sample, pydoc, or 'text:'"):
            check_visitor(cfg, env)
    check_visitor(PruneConfig.from_dict({"calib": {"source": "/etc/passwd"}}), {})  # the operator's own server: allowed


@pytest.mark.parametrize("change, field, env", [
    ({"calib": {"nsamples": 1000, "seqlen": 512}}, "nsamples", "PRUNING_LAB_MAX_CALIB_TOKENS"),
    ({"calib": {"nsamples": 1, "seqlen": 10_000}}, "seqlen", "PRUNING_LAB_MAX_SEQLEN"),
    ({"eval": {"seqlen": 100_000}}, "eval_seqlen", "PRUNING_LAB_MAX_SEQLEN"),
    ({"eval": {"windows": 100_000}}, "eval_windows", "PRUNING_LAB_MAX_EVAL_WINDOWS"),
    ({"max_new_tokens": 2000}, "max_new_tokens", "PRUNING_LAB_MAX_NEW_TOKENS"),
    ({"prompts": ["p"] * 50}, "prompts", "PRUNING_LAB_MAX_PROMPTS"),
    ({"prompts": ["x" * 5000]}, "prompts", "PRUNING_LAB_MAX_PROMPT_CHARS"),
    ({"calib": {"source": "text:" + "word " * 500_000}}, "calib", "PRUNING_LAB_MAX_TEXT_CHARS"),
])
def test_limits_name_the_field_the_limit_and_its_variable(change, field, env):
    cfg = PruneConfig.from_dict({"device": "cpu", **change})
    with pytest.raises(ConfigError) as e:
        check_visitor(cfg, {})
    msg = str(e.value)
    assert msg.startswith(field + ": ") and "over this server's limit of" in msg and f"({env})" in msg, msg
    check_visitor(cfg, {env: "10000000000"})  # the operator raised it: allowed


def test_limits_are_configurable_and_checked():
    assert settings.limit("calib_tokens", False, {}) == 65_536 and settings.limit("calib_tokens", True, {}) == 524_288
    assert settings.limit("calib_tokens", False, {"PRUNING_LAB_MAX_CALIB_TOKENS": "100"}) == 100
    with pytest.raises(ValueError, match=r"PRUNING_LAB_MAX_SEQLEN: '-3' is not a limit; allowed: a whole number >= 0"):
        settings.limit("seqlen", False, {"PRUNING_LAB_MAX_SEQLEN": "-3"})
    check_visitor(PruneConfig(device="cpu"), {})  # the defaults are within the defaults
    check_visitor(PruneConfig.from_dict({"device": "cuda", "calib": {"nsamples": 128, "seqlen": 2048},
                                         "eval": {"windows": 0, "seqlen": 2048}}), {})  # the papers' GPU setting


def test_memory_estimate_refuses_a_job_that_does_not_fit(tiny_llama):
    model, _ = tiny_llama
    cfg = PruneConfig.from_dict({"calib": {"nsamples": 4, "seqlen": 64}})
    need = check_job_memory(cfg, model, environ={}, available=10**12)
    assert need > sum(p.numel() * 4 for p in model.parameters())  # at least the pruned copy
    with pytest.raises(ConfigError, match=rf"^memory: this job needs about {need / 2**20:,.0f} MB .*; the limit is 0 MB "
                                          r"\(the memory left on this machine\); allowed: fewer calibration windows"):
        check_job_memory(cfg, model, environ={}, available=1000)
    with pytest.raises(ConfigError, match=r"the limit is 1 MB \(PRUNING_LAB_MAX_JOB_MEMORY_MB\)"):
        check_job_memory(cfg, model, environ={"PRUNING_LAB_MAX_JOB_MEMORY_MB": "1"}, available=10**12)
    bigger = check_job_memory(cfg.replace(calib=cfg.calib.__class__(nsamples=64, seqlen=64)), model, {}, 10**12)
    assert bigger > need  # activations grow with the calibration size


def test_run_job_refuses_before_any_work(tiny_dir, monkeypatch):
    from pruning import events as ev
    from pruning.api import run_job

    seen = []
    monkeypatch.setenv("PRUNING_LAB_MAX_JOB_MEMORY_MB", "0.001")
    cfg = PruneConfig.from_dict({"model": tiny_dir, "device": "cpu", "dtype": "float32",
                                 "calib": {"source": "pydoc", "nsamples": 2, "seqlen": 16}})
    with pytest.raises(ConfigError, match="^memory: this job needs about"):
        run_job(cfg, seen.append)
    assert not any(isinstance(e, (ev.LayerSolved, ev.Evaluated)) for e in seen)
    assert isinstance(seen[-1], ev.JobFailed) and seen[-1].kind == "input"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_launched_app_serves_no_file_outside_assets(tmp_path):
    from pruning.results import ResultStore
    from ui import build_app, launch_kwargs, served_paths

    kw = launch_kwargs()
    assert kw["allowed_paths"] == served_paths() and str(ROOT / "assets") in kw["allowed_paths"]
    demo = build_app(store=ResultStore(tmp_path / "store"), precomputed_dir=None)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=kw["allowed_paths"])
    base = f"http://127.0.0.1:{port}"
    try:
        secret = (ROOT / "app.py").resolve()
        for path in ("/etc/passwd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "../../../../etc/passwd", "%2Fetc%2Fpasswd",
                     str(secret), "app.py", "pyproject.toml", str(Path.home() / ".cache" / "pruning-lab"),
                     str(ROOT / "assets" / ".." / "app.py"), "assets/../app.py"):
            status, body = _get(f"{base}/gradio_api/file={path}")
            assert status >= 400, f"/gradio_api/file={path} was served ({status})"
            assert b"root:" not in body and b"build_app" not in body
        asset = next(p for p in (ROOT / "assets").rglob("*") if p.is_file() and p.suffix in (".json", ".png", ".svg"))
        status, body = _get(f"{base}/gradio_api/file={asset}")
        assert status == 200 and body == asset.read_bytes()  # the assets are served
    finally:
        demo.runner.shutdown()
        demo.close()
