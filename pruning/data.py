"""Calibration and evaluation text, and the tokenised windows the pipeline and the perplexity evaluation consume.

Sampling follows the shared pipeline of the reference implementations (``docs/algorithms.md``; checked
against IST-DASLab/sparsegpt ``datautils.py:get_c4``/``get_wikitext2`` and locuslab/wanda ``lib/data.py``):
calibration = ``nsamples`` random windows of exactly ``seqlen`` tokens, each from a random document longer than
``seqlen`` (``random.Random(seed)``, same draw order as the reference's ``random.seed(seed)``); evaluation =
the evaluation split tokenised as ONE string, cut into non-overlapping ``seqlen`` windows, tail dropped.
Tokenisation never adds special tokens (no BOS), as in the reference evaluation (``docs/assets.md``).

Sources (``CalibConfig.source`` / ``EvalConfig.source``):

===========================  =========================================================================================
``wiki-sample`` (default)    94 English Wikipedia articles from gensim 4.4.0's test data, converted once to plain text
                             (docs/assets.md) and cached as ``cache_dir()/text/wiki-sample.txt``. Article ``i % 4 == 3``
                             -> eval (23), the rest -> calib (71). Text CC BY-SA, Wikipedia contributors.
``pydoc``                    CPython's ``pydoc_data.topics`` (always present), topics in sorted order, same i % 4 split.
``wikitext2``                HF ``wikitext``/``wikitext-2-raw-v1`` via ``datasets``: calib = train rows joined with
                             ``" "`` (one document), eval = test rows joined with ``"\\n\\n"`` (as the reference).
``wikitext2:<path>``         the same from local files: a folder (or one file) holding ``*train*``/``*test*`` files in
                             ``.parquet`` (needs pyarrow or datasets), ``.json``/``.jsonl`` (optionally ``.gz``; rows
                             with a ``text`` field) or raw text (``wiki.train.raw``: one row per line).
``c4``                       HF ``allenai/c4`` shards ``en/c4-train.00000-of-01024.json.gz`` (calib; documents = rows)
                             and ``en/c4-validation.00000-of-00008.json.gz`` (eval: first 1100 rows joined with ``" "``).
``c4:<path>``                the same from local copies of those shards (a folder, searched recursively, or one file).
``hf:NAME[:CONFIG]:SPLIT:COLUMN``  any Hugging Face Hub dataset through ``datasets.load_dataset(NAME, CONFIG,
                             split=SPLIT)``, its text column COLUMN (SPLIT may be a slice such as ``train[:1000]``);
                             calib = the rows as documents, eval = the rows joined with ``"\\n\\n"`` as one document
                             (as wikitext2). Give the evaluation its own split: ``--eval hf:NAME:test:text``. Needs the
                             Hub (or the dataset in the local datasets cache); offline -> a DataError naming the field.
``json:<path>[:COLUMN]``,    a local JSON / JSON Lines (optionally ``.gz``) or parquet file (or a folder of them) read
``parquet:<path>[:COLUMN]``  with ``datasets``' ``json`` / ``parquet`` builders, column COLUMN (default ``text``); a
                             bare path ending in ``.json``, ``.jsonl`` (``.gz``) or ``.parquet`` means the same. Each row
                             is a part; see "user text" below.
``text:<pasted text>``       pasted text; see "user text" below. ``text_source(text)`` builds this string.
``file:<path>`` or a path    a UTF-8 text file; see "user text" below (read directly, as before; no ``datasets``).
===========================  =========================================================================================

User text (files, pasted text, JSON / parquet rows): split into parts -- at blank lines for text, one per row for
JSON / parquet. With at least 4 parts, part ``i % 4 == 3`` goes to eval and the rest to calib (each part is a
document); with fewer, the whole text is used for both splits (text), or every row for both (rows).

Documents and token ids are cached in memory, per (tokenizer identity, source identity, split), in the process's
``pruning.engine.DEFAULT`` (``DEFAULT.clear()`` forgets them); nothing is written to disk except the converted
Wikipedia text. The Hub is never forced offline process-wide: an unreachable Hub means ``local_files_only``.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import random
import re
import threading
import weakref
from pathlib import Path

import torch

from . import engine
from .assets import WIKI_FILE, WIKI_INSTALL, wiki_xml_candidates
from .errors import InputError
from .settings import cache_dir, hub_reachable

WIKI_ARTICLES = 94  # expected article count of the conversion (docs/assets.md)
WIKI_CONVERSION_VERSION = 1
C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
C4_VALIDATION = "en/c4-validation.00000-of-00008.json.gz"
C4_EVAL_DOCS = 1100
NAMED_SOURCES = ("wiki-sample", "pydoc", "wikitext2", "c4")
SPLITS = ("calib", "eval")
_ALLOWED = ("wiki-sample, pydoc, wikitext2[:local path], c4[:local path], hf:NAME[:CONFIG]:SPLIT:COLUMN, "
            "json:<path>[:COLUMN], parquet:<path>[:COLUMN], text:<pasted text>, or a path to a UTF-8 text, .json, "
            ".jsonl or .parquet file")
HF_FORMAT = "hf:NAME[:CONFIG]:SPLIT:COLUMN (e.g. hf:wikitext:wikitext-2-raw-v1:train:text)"
ROW_SUFFIXES = {".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json", ".parquet": "parquet"}


class DataError(InputError):
    """Text or windows could not be produced; the message names the field (calib/eval source, nsamples, seqlen)."""


def _field(split: str) -> str:
    return f"{split}.source" if split in SPLITS else "source"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split: {split!r} not allowed; allowed: {', '.join(SPLITS)}")


def _split_i4(parts: list[str], split: str) -> list[str]:
    """Document ``i % 4 == 3`` -> eval, the rest -> calib."""
    return [p for i, p in enumerate(parts) if (i % 4 == 3) == (split == "eval")]


# ----------------------------------------------------------------------------------------------------------------
# wiki-sample: conversion of gensim's Wikipedia XML excerpt (docs/assets.md, "conversion")

_WIKI_CUT = re.compile(r"^==\s*(See also|References|External links|Further reading|Notes|Footnotes|Bibliography|"
                       r"Sources|Citations|Notes and references)\s*==", re.M | re.I)
_WIKI_DROP_TAGS = {"ref", "table", "gallery", "math", "references", "timeline", "score"}
_WIKI_PREFIXED_LINK = re.compile(r"^\s*:?[A-Za-z\-]+:")  # File:, Image:, Category:, wikt:, fr:, :Category: ...
_WIKI_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_WIKI_EMPTY_PARENS = re.compile(r"\( \)")
_WIKI_SPACES = re.compile(r"[ \t]+")
_WIKI_MIN_CHARS = 2000


def wiki_xml_path() -> Path:
    """The gensim test-data file, located without importing gensim (slow import, heavy dependencies)."""
    for path in wiki_xml_candidates(WIKI_FILE):
        if path.is_file():
            return path
    raise DataError(f"calib.source/eval.source: 'wiki-sample' needs gensim's test data ({WIKI_FILE}), which is not "
                    f"installed. Install it with: {WIKI_INSTALL}   Or choose another source: pydoc, a text file, "
                    "text:<pasted text>.")


def _wiki_article(title: str, wikitext: str) -> str | None:
    """One page's wikitext -> ``= Title =`` + plain-text body, or None when the body is shorter than 2000 chars."""
    import mwparserfromhell

    cut = _WIKI_CUT.search(wikitext)  # drop See also / References / ... and everything after
    if cut:
        wikitext = wikitext[: cut.start()]
    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=False):
        if str(tag.tag).strip().lower() in _WIKI_DROP_TAGS:
            code.remove(tag)
    for link in code.filter_wikilinks(recursive=False):
        if _WIKI_PREFIXED_LINK.match(str(link.title)):
            code.remove(link)
    text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    text = _WIKI_EMPTY_PARENS.sub("", _WIKI_TABLE.sub("", text))
    lines = []
    for line in text.split("\n"):
        line = _WIKI_SPACES.sub(" ", line).strip()
        if line and not line.startswith(("thumb|", "|", "!")):
            lines.append(line)
    body = "\n".join(lines)
    return f"= {title} =\n{body}" if len(body) >= _WIKI_MIN_CHARS else None


def convert_wiki_sample(xml_bz2: Path | None = None) -> list[str]:
    """Convert the gensim Wikipedia excerpt to a list of articles (docs/assets.md, ~13 s).

    Skips redirects and ``(disambiguation)`` pages; each article is ``= Title =`` followed by its plain-text body;
    articles contain no blank lines.
    """
    import xml.etree.ElementTree as ET

    try:
        import mwparserfromhell  # noqa: F401
    except ImportError:
        raise DataError(f"calib.source/eval.source: 'wiki-sample' conversion needs mwparserfromhell. "
                        f"Install it with: {WIKI_INSTALL}") from None
    root = ET.fromstring(bz2.open(xml_bz2 or wiki_xml_path()).read())
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    articles = []
    for page in root.iter(f"{ns}page"):
        title = page.findtext(f"{ns}title") or ""
        text = page.findtext(f"{ns}revision/{ns}text") or ""
        if page.find(f"{ns}redirect") is not None or text.lstrip().upper().startswith("#REDIRECT"):
            continue
        if "(disambiguation)" in title:
            continue
        article = _wiki_article(title, text)
        if article is not None:
            articles.append(article)
    return articles


def wiki_sample_path() -> Path:
    """``cache_dir()/text/wiki-sample.txt``, converting on first use (written atomically)."""
    path = cache_dir() / "text" / "wiki-sample.txt"
    if path.is_file():
        return path
    with _CONVERT_LOCK:  # one conversion per process; the rename keeps concurrent processes safe
        if path.is_file():
            return path
        articles = convert_wiki_sample()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text("\n\n".join(articles), encoding="utf-8")
        os.replace(tmp, path)
    return path


_CONVERT_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------------------------
# local row readers for wikitext2 / c4 (no `datasets` needed except for parquet without pyarrow)


def _read_rows(path: Path, field: str) -> list[str]:
    """Rows (the ``text`` column) of one local file: .parquet, .json/.jsonl[.gz], or raw text (one row per line)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            pq = None
        if pq is not None:
            return [str(t) for t in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
        try:
            import datasets
        except ImportError:
            raise DataError(f"{field}: reading {path.name} needs pyarrow or datasets (pip install pyarrow)") from None
        return list(datasets.load_dataset("parquet", data_files=str(path), split="train")["text"])
    opener = gzip.open if name.endswith(".gz") else open
    base = name[:-3] if name.endswith(".gz") else name
    with opener(path, "rt", encoding="utf-8") as f:
        if base.endswith((".jsonl", ".json")):
            head = f.read(1)
            f.seek(0)
            if head == "[":  # a JSON array of rows
                return [str(r["text"]) for r in json.load(f)]
            return [str(json.loads(line)["text"]) for line in f if line.strip()]
        return f.read().splitlines(keepends=True)  # raw: one row per line, newline kept (as HF wikitext rows)


def _find_split_files(root: Path, keys: tuple[str, ...], field: str) -> list[Path]:
    """Files under ``root`` (recursively) whose name contains one of ``keys`` (e.g. 'train'), sorted."""
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and any(k in p.name.lower() for k in keys)
                   and re.search(r"\.(parquet|jsonl?|json\.gz|jsonl\.gz|raw|txt|tokens)$", p.name.lower()))
    if not files:
        raise DataError(f"{field}: no {'/'.join(keys)} files (.parquet, .json[l][.gz], .raw, .txt) under {str(root)!r}")
    return files


def _datasets_rows(field: str, label: str, how: str, column: str = "text", **kwargs) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{field}: {label!r} needs the `datasets` package and access to the Hugging Face Hub "
            f"(pip install datasets), or local files: {how}. Offline alternatives: wiki-sample, pydoc, a text file."
        ) from None
    online = hub_reachable()
    if not online:  # only the local datasets cache is tried (no ~25 s of retries), for this call only
        kwargs["download_config"] = datasets.DownloadConfig(local_files_only=True)
    try:
        ds = datasets.load_dataset(**kwargs)
    except Exception as e:  # boundary: hub unreachable, dataset missing, ... -> one clear message
        why = ("the Hugging Face Hub is not reachable from this machine and the dataset is not in the local "
               "datasets cache" if not online else
               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise DataError(f"{field}: could not load {label!r} through `datasets` ({why}). "
                        f"Use local files: {how}. Offline alternatives: wiki-sample, pydoc, a text file.") from e
    return _column(ds, column, field, label)


def _column(ds, column: str, field: str, label: str) -> list[str]:
    """The text rows of ``column`` of a ``datasets.Dataset``; a DataError naming the columns there are otherwise."""
    names = list(getattr(ds, "column_names", None) or [])
    if column not in names:
        raise DataError(f"{field}: {label!r} has no column {column!r}; its columns: {', '.join(names) or 'none'}")
    return ["" if r is None else str(r) for r in ds[column]]


def parse_hf_source(source: str, field: str = "source") -> dict:
    """``hf:NAME[:CONFIG]:SPLIT:COLUMN`` -> {"name", "config" (None if absent), "split", "column"}.

    Colons inside ``[...]`` belong to a split slice (``train[:1000]``). Raises DataError naming ``field``."""
    body = str(source)[len("hf:"):] if str(source).startswith("hf:") else str(source)
    parts, cur, depth = [], "", 0
    for ch in body:
        depth += (ch == "[") - (ch == "]")
        if ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    parts = [p.strip() for p in parts]
    if len(parts) not in (3, 4) or not all(parts):
        raise DataError(f"{field}: {str(source)[:120]!r} is not a Hub dataset source; write {HF_FORMAT}")
    name, config, split, column = (parts[0], None, *parts[1:]) if len(parts) == 3 else parts
    if not re.match(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$", name):
        raise DataError(f"{field}: {name!r} is not a Hub dataset name (such as wikitext or allenai/c4); "
                        f"write {HF_FORMAT}")
    return {"name": name, "config": config, "split": split, "column": column}


def hf_documents(source: str, split: str) -> list[str]:
    """The documents of a ``hf:NAME[:CONFIG]:SPLIT:COLUMN`` source: calib = the rows, eval = the rows joined with
    blank lines as one document (the wikitext2 convention)."""
    _check_split(split)
    field = _field(split)
    spec = parse_hf_source(source, field)
    how = "json:/path/to/rows.jsonl or parquet:/path/to/rows.parquet (a local copy of the rows)"
    kwargs = {"path": spec["name"], "split": spec["split"]}
    if spec["config"]:
        kwargs["name"] = spec["config"]
    rows = _datasets_rows(field, str(source), how, column=spec["column"], **kwargs)
    rows = [r for r in rows if r.strip()]
    return ["\n\n".join(rows)] if split == "eval" else rows


def _row_source(src: str) -> tuple[str, Path, str] | None:
    """(builder 'json'/'parquet', path, column) for ``json:``/``parquet:`` sources and bare .json/.jsonl/.parquet
    paths; None for anything else."""
    key, _, arg = src.partition(":")
    if key.strip().lower() in ("json", "parquet"):
        builder, rest = key.strip().lower(), arg.strip()
        column = "text"
        path = Path(rest).expanduser()
        if not path.exists() and ":" in rest:  # json:/data/rows.jsonl:content
            head, _, col = rest.rpartition(":")
            path, column = Path(head).expanduser(), col.strip() or "text"
        return builder, path, column
    low = src.lower()
    for suffix, builder in ROW_SUFFIXES.items():
        if low.endswith(suffix) and Path(src).expanduser().is_file():
            return builder, Path(src).expanduser(), "text"
    return None


def _row_files(builder: str, path: Path, field: str) -> list[str]:
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        suffixes = tuple(s for s, b in ROW_SUFFIXES.items() if b == builder)
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
        if files:
            return files
        raise DataError(f"{field}: no {', '.join(suffixes)} files under {str(path)!r}")
    raise DataError(f"{field}: {builder} path {str(path)!r} does not exist")


def row_documents(builder: str, path: Path, column: str, split: str) -> list[str]:
    """Rows of local JSON / parquet files through ``datasets``' ``json`` / ``parquet`` builders (column ``column``),
    split as user text (row ``i % 4 == 3`` -> eval with at least 4 rows; every row for both splits otherwise)."""
    _check_split(split)
    field = _field(split)
    files = _row_files(builder, path, field)
    try:
        import datasets
    except ImportError:
        raise DataError(f"{field}: reading {builder} files needs the `datasets` package (pip install datasets); "
                        "or give a plain UTF-8 text file") from None
    datasets.disable_progress_bars()  # no "Generating train split" bars for a few local rows
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as e:  # boundary: malformed JSON / parquet -> one clear message
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{field}: could not read {str(path)!r} with the datasets {builder!r} builder "
                        f"({type(e).__name__}: {first[:200]})") from e
    rows = [r.strip() for r in _column(ds, column, field, str(path)) if r.strip()]
    return _split_i4(rows, split) if len(rows) >= 4 else rows


def _local_rows(data_files, hf_split: str, field: str, what: str) -> list[str]:
    """Text rows of a local copy of a dataset split: a dict {split: path}, a folder, or a single file."""
    if isinstance(data_files, dict):
        files = [Path(data_files[hf_split])]
    else:
        root = Path(data_files).expanduser()
        if not root.exists():
            raise DataError(f"{field}: {what} path {str(root)!r} does not exist")
        files = _find_split_files(root, (hf_split,), field) if root.is_dir() else [root]
    return [r for f in files for r in _read_rows(f, field)]


def wikitext2_documents(split: str, data_files: str | os.PathLike | dict | None = None) -> list[str]:
    """WikiText-2 raw as one document per split: calib = train rows joined with ' ', eval = test joined with '\\n\\n'
    (reference ``get_wikitext2``). ``data_files``: None (hub via ``datasets``), a folder or file, or
    ``{"train": path, "test": path}``."""
    _check_split(split)
    field, hf_split = _field(split), ("train" if split == "calib" else "test")
    how = "'wikitext2:/path/to/wikitext-2-raw-v1' (a folder with train/test .parquet, .jsonl or .raw files)"
    if data_files is None:
        rows = _datasets_rows(field, "wikitext2", how, path="wikitext", name="wikitext-2-raw-v1", split=hf_split)
    else:
        rows = _local_rows(data_files, hf_split, field, "wikitext2")
    return [(" " if split == "calib" else "\n\n").join(rows)]


def c4_documents(split: str, data_files: str | os.PathLike | dict | None = None) -> list[str]:
    """C4 (en): calib = every document of the train shard; eval = the first 1100 validation documents joined with
    ' ' as one document (reference ``get_c4``; the reference also truncates to 256·seqlen tokens, which
    ``eval_windows(max_windows=256)`` reproduces). ``data_files``: None (hub), a folder or file, or a dict."""
    _check_split(split)
    field, hf_split = _field(split), ("train" if split == "calib" else "validation")
    shard = C4_TRAIN if split == "calib" else C4_VALIDATION
    how = f"'c4:/path/to/folder' holding {Path(C4_TRAIN).name} / {Path(C4_VALIDATION).name}"
    if data_files is None:
        rows = _datasets_rows(field, "c4", how, path="allenai/c4", data_files={hf_split: shard}, split=hf_split)
    else:
        rows = _local_rows(data_files, hf_split, field, "c4")
    if split == "eval":
        return [" ".join(rows[:C4_EVAL_DOCS])]
    return rows


# ----------------------------------------------------------------------------------------------------------------
# source resolution


def text_source(text: str) -> str:
    """Source string for pasted text (``"text:" + text``), usable as ``CalibConfig.source``/``EvalConfig.source``."""
    return "text:" + str(text)


def _user_documents(text: str, split: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if len(parts) >= 4:
        return _split_i4(parts, split)
    return [text] if text.strip() else []


def _pydoc_documents(split: str) -> list[str]:
    from pydoc_data.topics import topics

    return _split_i4([topics[k].strip() for k in sorted(topics)], split)


def _resolve(source: str, split: str) -> tuple[str, callable]:
    """(identity, loader) for a source string; identity changes whenever the text may change."""
    _check_split(split)
    src = str(source)
    field = _field(split)
    if src.startswith("text:"):
        body = src[len("text:"):]
        return "text:" + hashlib.sha256(body.encode()).hexdigest(), lambda: _user_documents(body, split)
    key, _, arg = src.partition(":")
    key = key.strip().lower()
    if key == "wiki-sample" and not arg:
        path = wiki_sample_path()
        st = path.stat()
        return (f"wiki-sample:v{WIKI_CONVERSION_VERSION}:{st.st_size}:{st.st_mtime_ns}",
                lambda: _split_i4(path.read_text(encoding="utf-8").split("\n\n"), split))
    if key == "pydoc" and not arg:
        return "pydoc", lambda: _pydoc_documents(split)
    if key in ("wikitext2", "c4"):
        fn = wikitext2_documents if key == "wikitext2" else c4_documents
        loc = arg.strip() or None
        return f"{key}:{loc and os.path.abspath(os.path.expanduser(loc))}", lambda: fn(split, loc)
    if key == "hf":
        spec = parse_hf_source(src, field)
        return "hf:" + json.dumps(spec, sort_keys=True), lambda: hf_documents(src, split)
    rows = _row_source(src)
    if rows is not None:
        builder, rpath, column = rows
        files = _row_files(builder, rpath, field)
        stamp = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        return (f"{builder}:{column}:" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:20],
                lambda: row_documents(builder, rpath, column, split))
    path = Path(src[len("file:"):] if src.startswith("file:") else src).expanduser()
    if path.is_file():
        st = path.stat()

        def read():
            try:
                return _user_documents(path.read_text(encoding="utf-8"), split)
            except UnicodeDecodeError as e:
                raise DataError(f"{field}: {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None

        return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", read
    if len(src) > 200:
        src = src[:200] + "..."
    raise DataError(f"{field}: unknown source {src!r} (not a named source and not an existing file); "
                    f"allowed: {_ALLOWED}")


def load_documents(source: str = "wiki-sample", split: str = "calib") -> list[str]:
    """The documents (articles, topics, paragraphs, C4 rows, ...) of ``split`` of ``source``; cached in memory."""
    ident, loader = _resolve(source, split)

    def load() -> list[str]:
        docs = loader()
        if not docs or not any(d.strip() for d in docs):
            raise DataError(f"{_field(split)}: source {str(source)[:80]!r} has no text for the {split} split; "
                            f"allowed: {_ALLOWED}")
        return docs

    return list(engine.DEFAULT.documents.get_or_make((ident, split), load))


def load_text(source: str = "wiki-sample", split: str = "calib") -> str:
    """The ``split`` ("calib" or "eval") of ``source`` as one string (documents joined with blank lines;
    wikitext2/c4 eval: one document already joined as the reference does)."""
    return "\n\n".join(load_documents(source, split))


# ----------------------------------------------------------------------------------------------------------------
# tokenisation and windows

def tokenizer_identity(tokenizer) -> str:
    """Stable hash of a tokenizer's behaviour (class + serialised fast-tokenizer JSON, or its vocabulary).

    Memoised per tokenizer object (~0.1 s for SmolLM2's 1.5 MB JSON); recomputed when ``len(tokenizer)`` changes."""
    memo = engine.DEFAULT.tokenizer_ids  # id(tokenizer) -> (weakref, identity, len)
    cached = memo.get(id(tokenizer))
    if cached is not None and cached[0]() is tokenizer and cached[2] == len(tokenizer):
        return cached[1]
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    ident = h.hexdigest()[:20]
    try:
        memo.put(id(tokenizer), (weakref.ref(tokenizer), ident, len(tokenizer)))
    except TypeError:
        pass
    return ident


def _encode(tokenizer, text: str) -> torch.Tensor:
    """(n,) int64 token ids of ``text``, no special tokens (no BOS)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _cached_ids(tokenizer, source: str, split: str, what: str, make) -> torch.Tensor:
    ident, _ = _resolve(source, split)
    return engine.DEFAULT.token_ids.get_or_make((tokenizer_identity(tokenizer), ident, split, what), make)


def split_ids(tokenizer, source: str = "wiki-sample", split: str = "eval") -> torch.Tensor:
    """(n,) token ids of the whole split tokenised as ONE string (as joined by ``load_text``).

    Cached in memory and shared between callers: do not modify the returned tensor in place."""
    return _cached_ids(tokenizer, source, split, "joined", lambda: _encode(tokenizer, load_text(source, split)))


def _doc_ids_memo(tokenizer, source: str, split: str) -> dict:
    """{document index: (n,) int64 ids}, filled lazily and shared between calls (one cache entry per split)."""
    return _cached_ids(tokenizer, source, split, "docs", dict)


SAMPLINGS = ("document", "stream")  # how calibration windows are drawn (see calibration_windows)


def calibration_windows(tokenizer, source: str = "wiki-sample", nsamples: int = 16, seqlen: int = 512,
                        seed: int = 0, sampling: str = "document") -> torch.Tensor:
    """(nsamples, seqlen) int64 calibration windows, deterministic for ``seed``.

    ``sampling='stream'``, as the reference ``get_wikitext2``: with ``rng = random.Random(seed)``, each window
    starts at ``rng.randint(0, n_tokens - seqlen - 1)`` of the whole calibration split tokenised as one string
    (a window may span two documents).

    ``sampling='document'`` (the default), as the reference ``get_c4``: with ``rng = random.Random(seed)``, repeat ``nsamples`` times: draw documents
    ``rng.randint(0, n_docs - 1)`` until one has more than ``seqlen`` tokens, then take the window starting at
    ``rng.randint(0, n_tokens - seqlen - 1)``. Documents are tokenised lazily (only those drawn). If no document
    is long enough (found once every document was seen, or after 10 000 + 100·nsamples draws without a hit),
    windows are drawn from the whole calibration split tokenised as one string instead.
    """
    if nsamples < 1:
        raise DataError(f"nsamples: {nsamples!r} must be >= 1")
    if seqlen < 1:
        raise DataError(f"seqlen: {seqlen!r} must be >= 1")
    if sampling not in SAMPLINGS:
        raise DataError(f"sampling: {sampling!r} is not a window sampling; allowed: {', '.join(SAMPLINGS)}")
    rng = random.Random(seed)
    windows = torch.empty(nsamples, seqlen, dtype=torch.long)  # (nsamples, seqlen)
    if sampling == "stream":
        return _stream_windows(tokenizer, source, nsamples, seqlen, rng, windows)
    docs = load_documents(source, "calib")
    memo = _doc_ids_memo(tokenizer, source, "calib")
    seen, hit, draws, budget = set(), False, 0, 10_000 + 100 * nsamples
    row = 0
    while row < nsamples:
        i = rng.randint(0, len(docs) - 1)
        draws += 1
        ids = memo.get(i)
        if ids is None:
            ids = memo[i] = _encode(tokenizer, docs[i])  # (n_i,)
        seen.add(i)
        if ids.numel() > seqlen:
            hit = True
            start = rng.randint(0, ids.numel() - seqlen - 1)
            windows[row] = ids[start:start + seqlen]
            row += 1
        elif not hit and (len(seen) == len(docs) or draws >= budget):
            break  # no document is long enough: fall back to the concatenated stream
    if row == nsamples:
        return windows
    return _stream_windows(tokenizer, source, nsamples, seqlen, rng, windows)


def _stream_windows(tokenizer, source: str, nsamples: int, seqlen: int, rng: random.Random,
                    windows: torch.Tensor) -> torch.Tensor:
    """Fill ``windows`` (nsamples, seqlen) with uniform windows of the calibration split's token stream."""
    stream = split_ids(tokenizer, source, "calib")  # (n_tokens,)
    if stream.numel() < seqlen + 1:
        raise DataError(
            f"seqlen: the calibration split of {str(source)[:80]!r} has only {stream.numel()} tokens; "
            f"{nsamples} windows (nsamples) of seqlen={seqlen} need at least seqlen+1 = {seqlen + 1}. "
            "Lower seqlen or use a longer source."
        )
    for r in range(nsamples):
        start = rng.randint(0, stream.numel() - seqlen - 1)
        windows[r] = stream[start:start + seqlen]
    return windows


def eval_windows(tokenizer, source: str = "wiki-sample", seqlen: int = 512, max_windows: int = 16) -> torch.Tensor:
    """(n, seqlen) int64 non-overlapping windows of the eval split tokenised as one string; tail dropped; the
    first ``max_windows`` (0 = all). No BOS is inserted (reference ``llama_eval``/``eval_ppl_wikitext``)."""
    if seqlen < 1:
        raise DataError(f"eval_seqlen: {seqlen!r} must be >= 1")
    if max_windows < 0:
        raise DataError(f"eval_windows: {max_windows!r} must be >= 0 (0 = all)")
    ids = split_ids(tokenizer, source, "eval")  # (n_tokens,)
    n = ids.numel() // seqlen
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise DataError(f"eval_seqlen: the eval split of {str(source)[:80]!r} has only {ids.numel()} tokens, fewer "
                        f"than one window of seqlen={seqlen}. Lower the eval seqlen or use a longer source.")
    return ids[: n * seqlen].view(n, seqlen).clone()
