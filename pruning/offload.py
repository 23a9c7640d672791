"""Models that do not fit: decoder blocks kept on CPU or on disk through accelerate, onloaded one at a time.

``load_offloaded`` loads a checkpoint with transformers' ``device_map`` / ``offload_folder`` (accelerate's dispatch
and offload hooks): every decoder block lives on ``"cpu"`` or ``"disk"``, everything else (embeddings, final norm,
LM head) on the compute device. A forward works as usual (accelerate brings each offloaded module's weights to the
compute device for its forward and drops them after), so perplexity and generation need nothing special.

The pipeline (``pruning.pipeline.prune_model``) asks ``store_of(model)`` for the model's ``BlockStore`` and wraps
each block in ``store.onload(block)``: the block's tensors are materialised on the compute device (accelerate's
hooks are told not to drop them), the block is pruned exactly as a resident one, and on a normal exit the pruned
linear weights are written back where they live -- for ``cpu``: the CPU copy in accelerate's weights map; for
``disk``: accelerate's ``offload_weight`` writes each one as a ``.dat`` memory map in the run's offload folder and
the offload index entry is pointed at it (the checkpoint the model was loaded from is only ever read). Then the block goes back to the meta device. Peak
accelerator memory is one block + its activations + one Gram; peak RAM with disk offload is the embeddings + one
block + activations.

On a failure or a cancel ``store.restore()`` points every entry back to the weights as loaded, so the model is left
as it was given. The offload mode and folder never change a result: ``PruneConfig.key()`` ignores them.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import uuid
import weakref
from pathlib import Path

import torch
from torch import nn

from .errors import InputError

OFFLOAD_MODES = ("none", "cpu", "disk")
ACCELERATE_INSTALL = "pip install accelerate"


class OffloadError(InputError):
    """Bad offload settings; the message names the field (offload, offload_folder) and what to do."""


def check_mode(mode: str) -> str:
    m = str(mode).strip().lower()
    if m not in OFFLOAD_MODES:
        raise OffloadError(f"offload: {mode!r} not allowed; allowed: {', '.join(OFFLOAD_MODES)}")
    return m


def check_accelerate() -> None:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise OffloadError(f"offload: keeping weights on CPU or disk needs the accelerate package, which is not "
                           f"installed. Install it with: {ACCELERATE_INSTALL}   Or use offload 'none'.") from None


def offload_root(folder: str | os.PathLike | None = None) -> Path:
    """Where offload runs keep their pruned blocks: ``folder``, or ``cache_dir()/offload``."""
    if folder:
        return Path(folder).expanduser()
    from .settings import cache_dir

    return cache_dir() / "offload"


def check_folder(folder: str | os.PathLike | None = None) -> Path:
    """Create ``folder`` (or the default root) if needed and prove it writable with a probe file; returns it.
    Raises OffloadError naming ``offload_folder`` before any weight is touched."""
    root = offload_root(folder)
    probe = root / f".probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise OffloadError(f"offload_folder: {str(root)!r} is not writable ({e.strerror or type(e).__name__}); "
                           "choose a folder you can write to with enough free space for the model's decoder blocks "
                           "(--offload-folder DIR)") from None
    if not root.is_dir():
        raise OffloadError(f"offload_folder: {str(root)!r} is not a folder")
    return root


def check_offload(mode: str, folder: str | os.PathLike | None = None) -> str:
    """Every offload check a run needs before loading anything: the mode, accelerate, a writable folder (disk)."""
    m = check_mode(mode)
    if m != "none":
        check_accelerate()
    if m == "disk":
        check_folder(folder)
    return m


# ----------------------------------------------------------------------------------------------------------------
# loading


def _checkpoint(name: str) -> str:
    """A path or Hub id ``from_pretrained`` understands for a model name (embedded alias, directory, Hub id)."""
    from . import models
    from .assets import EMBEDDED_ALIASES

    key = str(name).strip()
    if key.lower() in EMBEDDED_ALIASES:
        return str(models.ensure_embedded_cache())
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise models.ModelError(f"model: directory {str(path)!r} has no config.json (not a transformers checkpoint)")
        return str(path)
    if path.exists() or not models._HUB_ID.match(key):
        raise models.ModelError(f"model: {key!r} is not a model directory, an embedded alias or a Hub id")
    return key


def _source(name: str) -> str:
    """The same identity tag ``models.load_model`` gives (so fingerprints and dense caches are shared)."""
    from .assets import DEFAULT_MODEL, EMBEDDED_ALIASES

    key = str(name).strip()
    if key.lower() in EMBEDDED_ALIASES:
        return f"embedded:{DEFAULT_MODEL}"
    path = Path(key).expanduser()
    return f"dir:{path.resolve()}" if path.is_dir() else f"hub:{key}"


def device_map_for(model: nn.Module, where: str, main) -> dict:
    """accelerate device map: each decoder block on ``where`` ('cpu' or 'disk'), every other module on ``main``."""
    from .blocks import find_blocks

    prefix, blocks = find_blocks(model)
    main = str(main)
    out: dict = {}

    def visit(mod: nn.Module, name: str) -> None:
        if name == prefix:
            out.update({f"{prefix}.{i}": where for i in range(len(blocks))})
            return
        if name and not prefix.startswith(name + "."):
            out[name] = main
            return
        if any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
            raise OffloadError(f"offload: {type(model).__name__} keeps tensors directly on {name or 'the model'}; "
                               "it cannot be offloaded block by block. Use offload 'none'.")
        for cname, child in mod.named_children():
            visit(child, f"{name}.{cname}" if name else cname)

    visit(model, "")
    return out


# glibc's malloc serves requests below a dynamic threshold (growing to 32 MiB) from its heaps, and a freed heap chunk
# stays resident: over one block's solves that retained memory reached ~300 MB on a 2048-wide Llama, a quarter of a
# disk-offloaded run's peak. A disk-offloaded load sets the threshold to 1 MiB (larger buffers are mapped and unmapped
# by the kernel) and the pipeline hands freed heap memory back after each block (benchmarks/RESULTS.md §11).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@functools.cache
def _libc():
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl has no mallopt): nothing to tune
        return None


def map_large_allocations() -> bool:
    """Buffers of ``MMAP_THRESHOLD_BYTES`` and more go to their own memory maps from now on (glibc only; True if
    set). Process-wide by nature: called when a model is loaded offloaded to disk, where peak RAM is the point."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def return_freed_memory() -> None:
    """Hand the allocator's free heap pages back to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def load_offloaded(name: str, device="auto", dtype="auto", mode: str = "disk", folder=None):
    """``(model, tokenizer)`` with every decoder block on ``mode`` ('cpu' or 'disk') and the rest on ``device``.

    ``folder`` (disk): the root under which this load gets its own ``run-*`` folder for the pruned blocks (default
    ``cache_dir()/offload``); ``store_of(model).close()`` removes it. The checkpoint itself is only read.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .models import _check_plain_linears, _device_and_dtype, _quiet_transformers

    mode = check_offload(mode, folder)
    if mode == "none":
        raise OffloadError("offload: load_offloaded needs 'cpu' or 'disk'; for 'none' use pruning.models.load_model")
    dev, dt = _device_and_dtype(device, dtype)
    ckpt = _checkpoint(name)
    local = Path(ckpt).is_dir()
    _quiet_transformers()
    config = AutoConfig.from_pretrained(ckpt, trust_remote_code=False, local_files_only=local)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    dmap = device_map_for(skeleton, mode, dev if dev.type != "cuda" else (dev.index or 0))
    del skeleton
    run_dir = None
    if mode == "disk":
        run_dir = check_folder(folder) / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        run_dir.mkdir()
        map_large_allocations()
    try:
        tok = AutoTokenizer.from_pretrained(ckpt, trust_remote_code=False, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dt, device_map=dmap, trust_remote_code=False,
                                                     local_files_only=local,
                                                     offload_folder=None if run_dir is None else str(run_dir))
    except BaseException:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    _check_plain_linears(model, strict=False)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.pruning_lab_source = _source(name)
    model.pruning_lab_offload = BlockStore(model, mode, run_dir, dev)
    return model, tok


# ----------------------------------------------------------------------------------------------------------------
# onload / write back


def _loader_and_key(weights_map, name: str):
    """(the OffloadedWeightsLoader or dict at the bottom of accelerate's PrefixedDataset chain, the full key)."""
    prefix = ""
    while hasattr(weights_map, "dataset") and hasattr(weights_map, "prefix"):
        prefix = weights_map.prefix + prefix
        weights_map = weights_map.dataset
    return weights_map, prefix + name


def _offloaded_tensors(block: nn.Module):
    """[(module, hook, tensor name)] of the block's tensors that accelerate keeps off the compute device."""
    from accelerate.utils import named_module_tensors

    out = []
    for mod in block.modules():
        hook = getattr(mod, "_hf_hook", None)
        if hook is None or not getattr(hook, "offload", False) or hook.weights_map is None:
            continue
        for tname, _ in named_module_tensors(mod, include_buffers=hook.offload_buffers, recurse=hook.place_submodules,
                                             remove_non_persistent=True):
            out.append((mod, hook, tname))
    return out


class BlockStore:
    """Where an offloaded model's decoder blocks live, and how the pipeline onloads and writes one back."""

    def __init__(self, model: nn.Module, mode: str, folder: Path | None, device: torch.device):
        self.mode, self.folder, self.device = mode, folder, torch.device(device)
        self._undo: dict = {}  # (id(loader), key) -> (loader, key, where, original entry)
        self.written = 0  # tensors written back
        if folder is not None:  # the folder goes with the model (or at exit), if close() was not called first
            self._cleanup = weakref.finalize(model, shutil.rmtree, str(folder), True)

    def is_offloaded(self, block: nn.Module) -> bool:
        return bool(_offloaded_tensors(block))

    @contextlib.contextmanager
    def onload(self, block: nn.Module, index: int = 0, write: bool = True):
        """The block's tensors on the compute device, accelerate's offload paused, for the ``with`` body; on a normal
        exit (and ``write``) every linear weight is written back to where it lives; in any case the block goes back
        to meta."""
        from accelerate.utils import set_module_tensor_to_device

        from .blocks import block_linears

        entries = _offloaded_tensors(block)
        if not entries:
            yield block
            return
        hooks = {id(h): h for _, h, _ in entries}
        for mod, hook, tname in entries:
            set_module_tensor_to_device(mod, tname, hook.execution_device, value=hook.weights_map[tname])
        for h in hooks.values():
            h.offload = False  # its pre/post forward now leave the weights in place
        ok = False
        try:
            yield block
            ok = True
        finally:
            try:
                if ok and write:
                    weights = {id(lin.module): lin.module for lin in block_linears(block).values()}
                    self._write_back(index, [(m, h, t) for m, h, t in entries if id(m) in weights and t == "weight"])
            finally:
                for h in hooks.values():
                    h.offload = True
                for mod, _, tname in entries:
                    set_module_tensor_to_device(mod, tname, "meta")
                if self.mode == "disk":
                    return_freed_memory()

    def _write_back(self, index: int, entries) -> None:
        """cpu: replace the CPU copy in accelerate's weights map; disk: rewrite the tensor with accelerate's
        ``offload_weight`` (a ``.dat`` memory map in this load's folder) and point the offload index at it."""
        from accelerate.utils import offload_weight

        for mod, hook, tname in entries:
            loader, key = _loader_and_key(hook.weights_map, tname)
            value = getattr(mod, tname).detach()
            sd = loader if isinstance(loader, dict) else loader.state_dict
            if key in sd:  # cpu offload: the CPU copy in the weights map
                self._remember(loader, key, "state_dict", sd[key])
                sd[key] = value.to("cpu", copy=True)
            else:  # disk: the loader reads save_folder/<key>.dat for an index entry without a safetensors file
                if loader.save_folder is None or Path(loader.save_folder).resolve() != self.folder.resolve():
                    raise OffloadError(f"offload: accelerate's offload folder {loader.save_folder!r} is not this "
                                       f"run's {str(self.folder)!r}; nothing was written")
                self._remember(loader, key, "index", loader.index.get(key))
                offload_weight(value.to("cpu"), key, str(self.folder), index=loader.index)
            self.written += 1

    def _remember(self, loader, key, where, entry) -> None:
        self._undo.setdefault((id(loader), key), (loader, key, where, entry))

    def restore(self) -> None:
        """Every written entry back to the weights as loaded (the pipeline calls it on a failure or a cancel)."""
        for loader, key, where, entry in self._undo.values():
            if where == "state_dict":
                (loader if isinstance(loader, dict) else loader.state_dict)[key] = entry
            elif entry is None:
                loader.index.pop(key, None)
            else:
                loader.index[key] = entry
        self._undo.clear()

    def close(self) -> None:
        """Forget the originals; remove this load's offload folder (the model can no longer run after that)."""
        self._undo.clear()
        if self.folder is not None:
            self._cleanup()


def store_of(model: nn.Module) -> BlockStore | None:
    """The model's BlockStore when its blocks are offloaded (``load_offloaded``), else None."""
    return getattr(model, "pruning_lab_offload", None)


def real_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (parameter ``name`` of ``model``), read from accelerate's weights map when it is on meta."""
    from .models import real_tensor as read

    return read(model, name, tensor)
