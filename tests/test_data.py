"""pruning.data: sources and splits, calibration/eval windows, local wikitext2/c4 files, errors.

Fast tests use the tiny byte-level tokenizer and small texts (pydoc, tmp files, pasted text); ``slow`` tests use the
embedded Wikipedia sample and the real SmolLM2.
"""
import gzip
import json
import math
import sys

import pytest
import torch

import pruning.data as pd
from pruning.data import (DataError, calibration_windows, eval_windows, load_documents, load_text, split_ids,
                          text_source, tokenizer_identity)
from pruning.models import tiny_tokenizer


@pytest.fixture
def tok():
    return tiny_tokenizer()


def _ids(tok, text):
    return torch.tensor(tok(text, add_special_tokens=False).input_ids)


def _is_slice(window: torch.Tensor, ids: torch.Tensor) -> bool:
    """Is ``window`` a contiguous slice of ``ids``?"""
    n = window.numel()
    if ids.numel() < n:
        return False
    starts = (ids[: ids.numel() - n + 1] == window[0]).nonzero().flatten().tolist()
    return any(torch.equal(ids[s:s + n], window) for s in starts)


PARAS = [f"Paragraph {i}: " + " ".join(f"word{i}_{j}" for j in range(40 + 7 * i)) for i in range(10)]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("\n\n".join(PARAS) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- sources, splits


def test_pydoc_split_by_topic():
    from pydoc_data.topics import topics

    calib, ev = load_documents("pydoc", "calib"), load_documents("pydoc", "eval")
    assert len(calib) + len(ev) == len(topics) and len(ev) == len(topics) // 4
    keys = sorted(topics)
    assert ev[0] == topics[keys[3]].strip() and calib[3] == topics[keys[4]].strip()
    assert load_text("pydoc", "eval") == "\n\n".join(ev)


def test_user_file_split_i_mod_4(text_file):
    ev, calib = load_documents(str(text_file), "eval"), load_documents(f"file:{text_file}", "calib")
    assert ev == [PARAS[3], PARAS[7]]
    assert calib == [p for i, p in enumerate(PARAS) if i % 4 != 3]
    assert load_text(str(text_file), "eval") == PARAS[3] + "\n\n" + PARAS[7]


def test_user_file_few_parts_uses_whole_text(tmp_path):
    path = tmp_path / "short.txt"
    text = "First part.\n\nSecond part.\nStill second.\n"
    path.write_text(text, encoding="utf-8")
    assert load_text(str(path), "calib") == load_text(str(path), "eval") == text


def test_pasted_text_matches_file(text_file):
    src = text_source(text_file.read_text(encoding="utf-8"))
    assert src.startswith("text:")
    for split in ("calib", "eval"):
        assert load_text(src, split) == load_text(str(text_file), split)


def test_errors_name_the_field(tmp_path):
    with pytest.raises(DataError, match=r"^calib\.source: unknown source 'nope-source'.*wiki-sample, pydoc"):
        load_text("nope-source", "calib")
    with pytest.raises(DataError, match=r"^eval\.source"):
        load_text(str(tmp_path / "missing.txt"), "eval")
    with pytest.raises(DataError, match=r"^split: 'test'.*calib, eval"):
        load_text("pydoc", "test")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 \xa3".encode("latin-1"))
    with pytest.raises(DataError, match=r"calib\.source: .*not UTF-8"):
        load_text(str(bad), "calib")
    with pytest.raises(DataError, match=r"eval\.source: .*no text"):
        load_text("text:   \n\n  ", "eval")


def test_file_edit_invalidates_cache(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("one two three", encoding="utf-8")
    assert load_text(str(path), "calib") == "one two three"
    path.write_text("four five six seven", encoding="utf-8")  # size (and mtime) change
    assert load_text(str(path), "calib") == "four five six seven"


# ------------------------------------------------------------------------------------------ calibration windows


def test_calibration_deterministic_shapes_and_slices(tok):
    a = calibration_windows(tok, "pydoc", nsamples=6, seqlen=64, seed=0)
    b = calibration_windows(tok, "pydoc", nsamples=6, seqlen=64, seed=0)
    c = calibration_windows(tok, "pydoc", nsamples=6, seqlen=64, seed=1)
    assert a.shape == (6, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    docs = load_documents("pydoc", "calib")
    doc_ids = [_ids(tok, d) for d in docs]
    for w in a:  # each window is a slice of ONE document longer than seqlen
        assert any(d.numel() > 64 and _is_slice(w, d) for d in doc_ids)


def test_calibration_follows_reference_draw_order(tok, text_file):
    """Same draws as the reference get_c4: randint(doc) until long enough, then randint(start)."""
    import random

    docs = load_documents(str(text_file), "calib")
    doc_ids = [_ids(tok, d) for d in docs]
    seqlen = 100
    rng, expected = random.Random(5), []
    while len(expected) < 4:
        i = rng.randint(0, len(docs) - 1)
        if doc_ids[i].numel() > seqlen:
            s = rng.randint(0, doc_ids[i].numel() - seqlen - 1)
            expected.append(doc_ids[i][s:s + seqlen])
    got = calibration_windows(tok, str(text_file), nsamples=4, seqlen=seqlen, seed=5)
    assert torch.equal(got, torch.stack(expected))


def test_calibration_falls_back_to_stream_when_documents_are_short(tok, text_file):
    doc_ids = [_ids(tok, d) for d in load_documents(str(text_file), "calib")]
    seqlen = max(d.numel() for d in doc_ids) + 5  # no single paragraph is long enough
    stream = split_ids(tok, str(text_file), "calib")
    assert stream.numel() > seqlen
    w = calibration_windows(tok, str(text_file), nsamples=3, seqlen=seqlen, seed=0)
    assert w.shape == (3, seqlen) and all(_is_slice(row, stream) for row in w)
    assert torch.equal(w, calibration_windows(tok, str(text_file), nsamples=3, seqlen=seqlen, seed=0))


def test_calibration_too_small_text_errors(tok):
    src = text_source("only a handful of words here")
    n = split_ids(tok, src, "calib").numel()
    with pytest.raises(DataError, match=rf"seqlen: .*only {n} tokens.*nsamples.*seqlen=64.*seqlen\+1 = 65"):
        calibration_windows(tok, src, nsamples=2, seqlen=64)


# ------------------------------------------------------------------------------------------------ eval windows


def test_eval_windows_tail_dropped_and_capped(tok, text_file):
    ids = _ids(tok, load_text(str(text_file), "eval"))  # the split tokenised as ONE string
    seqlen = 16
    full = eval_windows(tok, str(text_file), seqlen=seqlen, max_windows=0)
    n = ids.numel() // seqlen
    assert ids.numel() % seqlen != 0  # there is a tail to drop
    assert full.shape == (n, seqlen) and torch.equal(full.reshape(-1), ids[: n * seqlen])
    capped = eval_windows(tok, str(text_file), seqlen=seqlen, max_windows=3)
    assert torch.equal(capped, full[:3])
    with pytest.raises(DataError, match="eval_seqlen: .*fewer than one window"):
        eval_windows(tok, str(text_file), seqlen=ids.numel() + 1)


def test_no_bos_inserted(tok, text_file):
    from tokenizers.processors import TemplateProcessing

    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A",
                                                              special_tokens=[("<|endoftext|>", 0)])
    assert tok("abc").input_ids[0] == 0  # this tokenizer would add a BOS by default
    w = eval_windows(tok, str(text_file), seqlen=16, max_windows=2)
    c = calibration_windows(tok, str(text_file), nsamples=8, seqlen=16, seed=0)
    assert int((w == 0).sum()) == 0 and int((c == 0).sum()) == 0


def test_token_cache_hits_and_tokenizer_identity(tok):
    a = split_ids(tok, "pydoc", "eval")
    assert split_ids(tok, "pydoc", "eval") is a  # served from the in-memory cache
    other = tiny_tokenizer()
    assert tokenizer_identity(other) == tokenizer_identity(tok)
    other.add_tokens(["<extra_tok>"])  # the memo notices the new length and recomputes
    assert tokenizer_identity(other) != tokenizer_identity(tok)


def test_engine_clear_forgets_texts_and_ids(tok):
    from pruning import engine

    a = split_ids(tok, "pydoc", "eval")
    docs = load_documents("pydoc", "eval")
    assert len(engine.DEFAULT.token_ids) >= 1 and len(engine.DEFAULT.documents) >= 1
    engine.DEFAULT.clear(models=False)
    assert len(engine.DEFAULT.token_ids) == len(engine.DEFAULT.documents) == len(engine.DEFAULT.tokenizer_ids) == 0
    b = split_ids(tok, "pydoc", "eval")
    assert b is not a and torch.equal(a, b) and load_documents("pydoc", "eval") == docs


def test_lru_keeps_the_most_recent():
    from pruning.lru import LRU

    c = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # "a" is now the most recent
    c.put("c", 3)
    assert "b" not in c and c.keys() == ["a", "c"] and len(c) == 2
    made = []
    assert c.get_or_make("d", lambda: made.append(1) or 4) == 4 and c.get_or_make("d", lambda: made.append(1) or 5) == 4
    assert made == [1] and c.get("zzz", "none") == "none"
    with pytest.raises(ValueError, match="maxsize"):
        LRU(0)


# ------------------------------------------------------------------------------ wikitext2 / c4 (local files)


WT_TRAIN = [" = Title = \n", " \n", " Some train text about things . \n", " More train text . \n"]
WT_TEST = [" = Test = \n", " \n", " Test text here . \n"]


def test_wikitext2_local_jsonl_and_raw(tmp_path):
    d = tmp_path / "wt2"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WT_TRAIN), encoding="utf-8")
    (d / "test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in WT_TEST), encoding="utf-8")
    src = f"wikitext2:{d}"
    assert load_text(src, "calib") == " ".join(WT_TRAIN)  # reference: " ".join(train['text'])
    assert load_text(src, "eval") == "\n\n".join(WT_TEST)  # reference: "\n\n".join(test['text'])
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "wiki.train.raw").write_text("".join(WT_TRAIN), encoding="utf-8")
    (raw / "wiki.test.raw").write_text("".join(WT_TEST), encoding="utf-8")
    assert load_text(f"wikitext2:{raw}", "calib") == " ".join(WT_TRAIN)
    assert load_text(f"wikitext2:{raw}", "eval") == "\n\n".join(WT_TEST)
    assert pd.wikitext2_documents("eval", {"test": raw / "wiki.test.raw"}) == ["\n\n".join(WT_TEST)]


def test_wikitext2_local_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed: parquet reading not testable here")
    import pyarrow as pa

    d = tmp_path / "wt2"
    d.mkdir()
    pq.write_table(pa.table({"text": WT_TRAIN}), d / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": WT_TEST}), d / "test-00000-of-00001.parquet")
    assert load_text(f"wikitext2:{d}", "calib") == " ".join(WT_TRAIN)
    assert load_text(f"wikitext2:{d}", "eval") == "\n\n".join(WT_TEST)


def test_c4_local_shards(tmp_path, tok):
    root = tmp_path / "c4" / "en"
    root.mkdir(parents=True)
    train = [f"Train doc {i}. " + "alpha beta gamma delta " * (5 + 10 * (i % 3)) for i in range(12)]
    val = [f"val{i}" for i in range(1105)]
    with gzip.open(root / "c4-train.00000-of-01024.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "url": "u"}) + "\n" for t in train)
    with gzip.open(root / "c4-validation.00000-of-00008.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in val)
    src = f"c4:{tmp_path / 'c4'}"
    assert load_documents(src, "calib") == train  # documents = rows of the train shard
    assert load_text(src, "eval") == " ".join(val[:1100])  # first 1100 validation docs joined with ' '
    w = calibration_windows(tok, src, nsamples=5, seqlen=32, seed=0)
    assert w.shape == (5, 32) and all(any(_is_slice(r, _ids(tok, t)) for t in train) for r in w)


def test_hub_sources_without_datasets_give_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match=r"^calib\.source: 'wikitext2' needs the `datasets` package.*wikitext2:"):
        load_text("wikitext2", "calib")
    with pytest.raises(DataError, match=r"^eval\.source: 'c4' needs the `datasets` package.*c4:"):
        load_text("c4", "eval")
    with pytest.raises(DataError, match=r"eval\.source: wikitext2 path .* does not exist"):
        load_text("wikitext2:/no/such/folder", "eval")


# ------------------------------------------------------------------------------- Wikipedia conversion (fast)

BODY = ("'''Foo''' is a [[bar|thing]] ({{IPA|x}}) studied since 1900.<ref>Cite me</ref> " * 60
        + "\n[[File:Foo.jpg|thumb|A caption]]\n{| class=wikitable\n|-\n| cell\n|}\n"
        + "== History ==\nIt grew ( ) a lot.\n[[Category:Things]]\n")
XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Foo</title><ns>0</ns><revision><text>{body}== See also ==\n* [[Baz]] is related</text></revision></page>
<page><title>Redirected</title><ns>0</ns><redirect title="Foo" /><revision><text>#REDIRECT [[Foo]]</text></revision></page>
<page><title>Foo (disambiguation)</title><ns>0</ns><revision><text>{body}</text></revision></page>
<page><title>Stub</title><ns>0</ns><revision><text>Too short.</text></revision></page>
</mediawiki>"""


def test_wiki_conversion_rules(tmp_path):
    import bz2
    from xml.sax.saxutils import escape

    path = tmp_path / "mini.xml.bz2"
    path.write_bytes(bz2.compress(XML.format(body=escape(BODY)).encode()))
    articles = pd.convert_wiki_sample(path)
    assert len(articles) == 1  # redirect, disambiguation and the <2000-char stub are skipped
    art = articles[0]
    assert art.startswith("= Foo =\nFoo is a thing () studied since 1900.")
    for gone in ("Cite me", "File:", "caption", "wikitable", "cell", "Category", "See also", "Baz", "( )", "\n\n"):
        assert gone not in art, gone
    assert "\nHistory\nIt grew a lot." in art  # headings become plain lines; "( )" removed


def test_wiki_sample_missing_gensim_names_pip(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(pd, "WIKI_FILE", "no-such-file.xml.bz2")
    with pytest.raises(DataError, match=r"wiki-sample.*pip install --no-deps gensim==4\.4\.0"):
        load_text("wiki-sample", "calib")


# ------------------------------------------------------------------------------------ embedded Wikipedia (slow)


@pytest.mark.slow
def test_wiki_sample_counts():
    calib, ev = load_documents("wiki-sample", "calib"), load_documents("wiki-sample", "eval")
    assert len(calib) == 71 and len(ev) == 23 and len(calib) + len(ev) == pd.WIKI_ARTICLES
    assert ev[0].startswith("= A =\n") and ev[1].startswith("= Aristotle =\n") and calib[0].startswith("= Anarchism =")
    assert ev[-1].startswith("= American Revolutionary War =")
    assert all(d.startswith("= ") and "\n\n" not in d and len(d) > 2000 for d in calib + ev)
    full = pd.wiki_sample_path().read_text(encoding="utf-8")
    assert abs(len(load_text("wiki-sample", "eval")) - 596_870) < 500  # assets.md: 596,870 chars
    assert abs(len(full) - 2_799_783) < 2000


@pytest.mark.slow
def test_wiki_sample_windows_and_dense_ppl(smollm2):
    model, tok = smollm2
    assert abs(split_ids(tok, "wiki-sample", "eval").numel() - 131_018) < 200  # assets.md: 131,018 tokens
    cw = calibration_windows(tok, "wiki-sample", nsamples=4, seqlen=512, seed=0)
    assert cw.shape == (4, 512)
    ew = eval_windows(tok, "wiki-sample", seqlen=512, max_windows=4)
    assert ew.shape == (4, 512)
    with torch.no_grad():
        losses = [float(model(w[None], labels=w[None]).loss) for w in ew]
    ppl = math.exp(sum(losses) / len(losses))
    assert math.isfinite(ppl) and 10 < ppl < 60, ppl  # assets.md: 21.9 (8 windows), 22.8 (16), 25.4 (32)


# ------------------------------------------------------------------------- the embedded sample is unchanged
# sha256 of the int64 token ids (little-endian bytes of the tensor), computed with main's code at commit 49cbf1c
# (before sources through `datasets` were added) by pruning.data.calibration_windows / eval_windows / load_text:
WIKI_TEXT_SHA = {"calib": "4b87c9af544bbc24e2181778b3b87130a28eeebbf46e3718ae078b137cb9abea",
                 "eval": "03e0d6b5708f20e69b95f12a3557aed8870fc1349cd23ca212fa7a9316863490"}
WIKI_WINDOWS_SHA = {  # (tokenizer, what) -> (shape, sha256)
    ("tiny", "calib16x512"): ((16, 512), "3a47bcba44b94223a531a1dfda41e9c50a0632e05b880e277b1a0c01ca7dfcc3"),
    ("tiny", "eval512x16"): ((16, 512), "fe91bdc9badb5c624da67634d9a967c67dff7fe0eb2239f9ba4ca3fcadd09cc1"),
    ("smollm2", "calib16x512"): ((16, 512), "81339cc4435814b596e83067774b84157e89d1e5cba9faea21e8ba1d7b23f2e5"),
    ("smollm2", "eval512x16"): ((16, 512), "979ca01db54eba942345437049c44cecb9bba695569076c5ab7ad14e776d21d7"),
    ("smollm2", "calib128x2048"): ((128, 2048), "cb0a5b27013e199870679abc21a57c22aac644bbecf325dfcb177198f11f8ca8"),
    ("smollm2", "eval2048all"): ((63, 2048), "2dd381bcf81769399e6f2ccedd4e2a3028ccb82f7288a4181afb1efaaa7e4bf6"),
}


def _sha(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _wiki_windows(tok, what: str) -> torch.Tensor:
    if what.startswith("calib"):
        n, seqlen = map(int, what[len("calib"):].split("x"))
        return calibration_windows(tok, "wiki-sample", nsamples=n, seqlen=seqlen, seed=0)
    seqlen, n = what[len("eval"):].split("x") if "x" in what else (what[len("eval"):-3], "0")
    return eval_windows(tok, "wiki-sample", seqlen=int(seqlen), max_windows=int(n))


def test_wiki_sample_same_text_and_windows_as_before(tok):
    import hashlib

    for split, sha in WIKI_TEXT_SHA.items():
        assert hashlib.sha256(load_text("wiki-sample", split).encode()).hexdigest() == sha
    for (name, what), (shape, sha) in WIKI_WINDOWS_SHA.items():
        if name == "tiny":
            w = _wiki_windows(tok, what)
            assert tuple(w.shape) == shape and _sha(w) == sha, what


@pytest.mark.slow
def test_wiki_sample_same_windows_as_before_smollm2(smollm2):
    _, tok = smollm2
    for (name, what), (shape, sha) in WIKI_WINDOWS_SHA.items():
        if name == "smollm2":
            w = _wiki_windows(tok, what)
            assert tuple(w.shape) == shape and _sha(w) == sha, what


# ------------------------------------------------------------------------- sources through `datasets`

ROWS = [f"Row {i}: " + " ".join(f"tok{i}_{j}" for j in range(20 + i)) for i in range(9)]


def test_parse_hf_source_forms():
    from pruning.data import parse_hf_source

    assert parse_hf_source("hf:wikitext:wikitext-2-raw-v1:train:text") == {
        "name": "wikitext", "config": "wikitext-2-raw-v1", "split": "train", "column": "text"}
    assert parse_hf_source("hf:allenai/c4:validation[:100]:text") == {
        "name": "allenai/c4", "config": None, "split": "validation[:100]", "column": "text"}
    assert parse_hf_source("hf:org/ds:cfg:train[10:20%]:body")["split"] == "train[10:20%]"
    for bad in ("hf:wikitext", "hf:wikitext:train", "hf:a:b:c:d:e", "hf::train:text", "hf:bad name:train:text"):
        with pytest.raises(DataError, match=r"^calib\.source: .*hf:NAME\[:CONFIG\]:SPLIT:COLUMN"):
            parse_hf_source(bad, "calib.source")


def test_hf_source_format_checked_by_the_config():
    from pruning.config import CalibConfig, ConfigError, EvalConfig

    assert CalibConfig(source="hf:wikitext:wikitext-2-raw-v1:train:text").source.startswith("hf:")
    with pytest.raises(ConfigError, match=r"^calib\.source: 'hf:wikitext' is not a Hub dataset source; write hf:NAME"):
        CalibConfig(source="hf:wikitext")
    with pytest.raises(ConfigError, match=r"^eval\.source: .*write hf:NAME"):
        EvalConfig(source="hf:x:y")


def test_hf_source_offline_message(monkeypatch):
    monkeypatch.setattr(pd, "hub_reachable", lambda: False)
    with pytest.raises(DataError, match=r"^eval\.source: could not load 'hf:someorg/not-cached:test:text' through "
                                        r"`datasets` \(the Hugging Face Hub is not reachable from this machine"):
        load_documents("hf:someorg/not-cached:test:text", "eval")


def test_hf_source_rows_and_column(monkeypatch):
    """The hub path with datasets' loader stubbed by a real in-memory Dataset: calib = rows, eval = one document."""
    import datasets

    seen = {}

    def fake_load(**kw):
        seen.update(kw)
        return datasets.Dataset.from_dict({"body": ROWS + [""], "n": list(range(len(ROWS) + 1))})

    monkeypatch.setattr(pd, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    src = "hf:org/fake-ds:cfg1:train[:50%]:body"
    assert load_documents(src, "calib") == ROWS  # the empty row is dropped
    assert seen == {"path": "org/fake-ds", "name": "cfg1", "split": "train[:50%]"}
    assert load_documents(src, "eval") == ["\n\n".join(ROWS)]
    with pytest.raises(DataError, match=r"^calib\.source: 'hf:org/fake-ds:train:text' has no column 'text'; "
                                        r"its columns: body, n"):
        load_documents("hf:org/fake-ds:train:text", "calib")


def _write_rows(path, rows, column="text", fmt="jsonl"):
    if fmt == "jsonl":
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8") as f:
            f.write("\n".join(json.dumps({column: r, "id": i}) for i, r in enumerate(rows)) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps([{column: r} for r in rows]), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({column: rows, "id": list(range(len(rows)))}), path)
    return path


@pytest.mark.parametrize("name,fmt", [("rows.jsonl", "jsonl"), ("rows.jsonl.gz", "jsonl"), ("rows.json", "json"),
                                      ("rows.parquet", "parquet")])
def test_local_row_files_through_datasets_builders(tmp_path, name, fmt):
    path = _write_rows(tmp_path / name, ROWS, fmt=fmt)
    calib, ev = load_documents(str(path), "calib"), load_documents(str(path), "eval")
    assert ev == [ROWS[3], ROWS[7]] and calib == [r for i, r in enumerate(ROWS) if i % 4 != 3]
    builder = "parquet" if fmt == "parquet" else "json"
    assert load_documents(f"{builder}:{path}", "eval") == ev  # the explicit prefix means the same


def test_local_rows_column_folder_and_errors(tmp_path, tok):
    path = _write_rows(tmp_path / "a.parquet", ROWS[:3], column="content", fmt="parquet")
    assert load_documents(f"parquet:{path}:content", "eval") == ROWS[:3]  # < 4 rows: every row for both splits
    with pytest.raises(DataError, match=r"^calib\.source: '.*a\.parquet' has no column 'text'; its columns: content, id"):
        load_documents(str(path), "calib")
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_rows(folder / "part-0.jsonl", ROWS[:5])
    _write_rows(folder / "part-1.jsonl", ROWS[5:])
    assert load_documents(f"json:{folder}", "eval") == [ROWS[3], ROWS[7]]
    with pytest.raises(DataError, match=r"^eval\.source: json path '.*missing\.jsonl' does not exist"):
        load_documents(f"json:{tmp_path / 'missing.jsonl'}", "eval")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^calib\.source: could not read '.*bad\.jsonl' with the datasets 'json' builder"):
        load_documents(str(bad), "calib")
    w = calibration_windows(tok, str(_write_rows(tmp_path / "c.jsonl", ROWS)), nsamples=2, seqlen=16, seed=0)
    assert w.shape == (2, 16) and any(_is_slice(w[0], _ids(tok, r)) for r in ROWS)
def test_stream_sampling_follows_reference_wikitext2_draws(tok, text_file):
    """sampling='stream', as the reference get_wikitext2: each window starts at randint(0, n - seqlen - 1) of the
    whole calibration split tokenised as one string; the config carries it and keeps old keys stable."""
    import random

    from pruning.config import CalibConfig, ConfigError, PruneConfig

    stream = split_ids(tok, str(text_file), "calib")
    rng, seqlen = random.Random(3), 40
    starts = [rng.randint(0, stream.numel() - seqlen - 1) for _ in range(5)]
    got = calibration_windows(tok, str(text_file), nsamples=5, seqlen=seqlen, seed=3, sampling="stream")
    assert torch.equal(got, torch.stack([stream[s:s + seqlen] for s in starts]))
    doc = calibration_windows(tok, str(text_file), nsamples=5, seqlen=seqlen, seed=3)
    assert torch.equal(doc, calibration_windows(tok, str(text_file), nsamples=5, seqlen=seqlen, seed=3, sampling="document"))
    assert not torch.equal(doc, got)
    with pytest.raises(DataError, match=r"sampling: 'docs' is not a window sampling; allowed: document, stream"):
        calibration_windows(tok, str(text_file), nsamples=2, seqlen=seqlen, sampling="docs")
    with pytest.raises(ConfigError, match=r"sampling: 'random' is not a window sampling; allowed: document, stream"):
        CalibConfig(sampling="random")
    base = PruneConfig()
    assert base.calib.sampling == "document"
    from pathlib import Path

    shipped = json.loads((Path(__file__).resolve().parent.parent / "assets/precomputed/smollm2-135m.json").read_text())
    old = [r for r in shipped["runs"] if "sampling" not in r["config"]["calib"]]
    assert old and all(PruneConfig.from_dict(r["config"]).key() == r["key"] for r in old)  # keys written before it
    stream_cfg = PruneConfig(calib=CalibConfig(sampling="stream"))
    assert stream_cfg.key() != base.key() and PruneConfig.from_dict(stream_cfg.to_dict()).calib.sampling == "stream"
