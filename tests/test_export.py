"""Export: save_pretrained + model card, atomic; re-built from the result store with a bit-for-bit check."""
import json

import pytest
import torch

from pruning.export import (ExportError, ReproductionError, check_reproduced, export_run, find_run, model_card,
                            run_id_of, write_export, zip_folder)
from pruning.results import ResultStore

from _tiny import cli, small


def front_matter(text: str):
    import yaml

    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]), text[end + 5:]


def _ppl_of_folder(folder, eval_ids):
    from transformers import AutoModelForCausalLM

    from pruning.evaluate import perplexity

    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    m.eval()
    return m, perplexity(m, eval_ids)


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    """One finished run (report + pruned model) on the tiny model, stored in a private result store."""
    from pruning.api import run_job

    store = ResultStore(tmp_path_factory.mktemp("store"))
    rep = run_job(small(tiny_dir, solver="sparsegpt", sparsity=0.5), keep_model=True)
    model, tok = rep.pop("_model"), rep.pop("_tokenizer")
    store.put(rep)
    return rep, model, tok, store


def test_export_reloads_with_plain_transformers_and_same_perplexity(finished, tmp_path):
    from pruning.data import eval_windows

    rep, model, tok, _ = finished
    out = write_export(model, tok, rep, tmp_path / "out")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "pruning_report.json"} <= files
    assert "tokenizer.json" in files or "tokenizer_config.json" in files
    cfg = json.loads((out / "config.json").read_text())
    assert "sparsity_config" not in cfg and "quantization_config" not in cfg
    e = rep["config"]["eval"]
    ids = eval_windows(tok, source=e["source"], seqlen=e["seqlen"], max_windows=e["windows"])
    reloaded, ppl = _ppl_of_folder(out, ids)
    assert ppl == pytest.approx(rep["perplexity"]["pruned"], rel=1e-4)
    # per-layer sparsity read back from the saved weights equals the report's
    from pruning.blocks import block_linears, find_blocks

    _, blocks = find_blocks(reloaded)
    for l in rep["layers"]:
        w = block_linears(blocks[l["block"]])[l["name"]].get_weight()
        assert float((w == 0).float().mean()) == pytest.approx(l["sparsity"], abs=1e-9)


def test_model_card_front_matter_and_body(finished):
    rep = finished[0]
    meta, body = front_matter(model_card(rep))
    assert meta["library_name"] == "transformers"
    assert meta["tags"][:2] == ["pruned", "sparsegpt"] and "unstructured" in meta["tags"]
    assert meta["base_model"] and meta["license"]
    assert "## Configuration" in body and "## Results" in body and "## Calibration data" in body
    assert "python -m pruning run" in body and "--solver sparsegpt" in body
    assert f"{rep['perplexity']['pruned']:.4f}" in body
    for kind in ("q_proj", "down_proj"):
        assert f"| {kind} |" in body


def test_export_refuses_a_non_empty_target_unless_overwrite(finished, tmp_path):
    rep, model, tok, _ = finished
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty.*--overwrite"):
        write_export(model, tok, rep, target)
    assert (target / "keep.txt").read_text() == "mine" and len(list(target.iterdir())) == 1
    write_export(model, tok, rep, target, overwrite=True)
    assert (target / "README.md").is_file() and not (target / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_export_failure_leaves_no_partial_folder(finished, tmp_path, monkeypatch):
    rep, model, tok, _ = finished
    import pruning.export as ex

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "model_card", boom)
    with pytest.raises(ExportError, match="No space left on device.*nothing was written"):
        write_export(model, tok, rep, tmp_path / "full")
    assert list(tmp_path.iterdir()) == []


def test_export_cancel_leaves_no_partial_folder(finished, tmp_path):
    import threading

    from pruning.events import Cancelled

    rep, model, tok, _ = finished
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        write_export(model, tok, rep, tmp_path / "cancelled", cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_run_ids_unknown_and_ambiguous(finished):
    rep, _, _, store = finished
    runs = store.list_runs()
    rid = run_id_of(rep)
    assert find_run(rid, runs)["key"] == rep["key"]
    assert find_run(rid[:8], runs)["key"] == rep["key"]
    with pytest.raises(ExportError, match="close matches: " + rid[:6]):
        find_run(rid[:-2] + "zz", runs)
    with pytest.raises(ExportError, match="run id: empty"):
        find_run("  ", runs)


def test_export_run_rebuilds_bit_for_bit_from_the_store(finished, tmp_path):
    rep, model, tok, store = finished
    out = export_run(run_id_of(rep), tmp_path / "from-store", store=store)
    from safetensors.torch import load_file

    a = load_file(str(out / "model.safetensors"))
    ref = {k: v for k, v in model.state_dict().items()}
    for k, v in a.items():
        assert torch.equal(v, ref[k]), k
    z = zip_folder(out)
    import zipfile

    names = zipfile.ZipFile(z).namelist()
    assert f"{out.name}/README.md" in names and f"{out.name}/model.safetensors" in names


def test_reproduction_mismatch_is_refused():
    stored = [{"block": 0, "name": "q", "rel_error": 0.1}]
    check_reproduced(stored, [{"block": 0, "name": "q", "rel_error": 0.1}])
    with pytest.raises(ReproductionError, match="different per-layer errors on 1 of 1"):
        check_reproduced(stored, [{"block": 0, "name": "q", "rel_error": 0.1000000001}])


def test_bench_sparse_on_cpu_reports_no_kernel_without_failing(tmp_path):
    from pruning.sparse_bench import bench_sparse, format_table, load_measurement, save_measurement

    res = bench_sparse(shapes=((64, 128), (32, 64)), tokens=64, device="cpu", reps=2)
    assert res["kernel"] is False and "no semi-structured (2:4) sparse kernel on cpu" in res["reason"]
    assert [(r["d_out"], r["d_in"]) for r in res["rows"]] == [(64, 128), (32, 64)]
    assert all(r["dense_ms"] > 0 and r["sparse_ms"] is None for r in res["rows"])
    assert "no semi-structured" in format_table(res)
    p = save_measurement(res, tmp_path / "b.json")
    assert load_measurement(p) == res and load_measurement(tmp_path / "missing.json") is None


def test_cli_run_save_then_export_by_run_id(tiny_dir, tmp_path):
    env = {"PRUNING_LAB_CACHE": str(tmp_path / "cache")}
    common = ["--model", tiny_dir, "--calib", "pydoc", "--nsamples", "4", "--seqlen", "64", "--eval-windows", "3",
              "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "2", "--batch-size", "2", "--quiet"]
    r = cli("run", "--solver", "wanda", "--sparsity", "0.5", *common, "--eval-kl", "--json",
             str(tmp_path / "r.json"), "--save", str(tmp_path / "saved"), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["run_id"] == run_id_of({k: v for k, v in rep.items() if k != "run_id"})
    assert 0 <= rep["drift"]["kl"] and 0 <= rep["drift"]["top1_agreement"] <= 1
    assert "top-1 agreement" in r.stdout and f"run id {rep['run_id']}" in r.stdout
    meta, body = front_matter((tmp_path / "saved" / "README.md").read_text())
    assert meta["tags"][:2] == ["pruned", "wanda"] and "top-1 agreement" in body
    # the same run again from the store, by its run id (a unique prefix is enough)
    r2 = cli("export", rep["run_id"][:12], str(tmp_path / "exported"), "--quiet", env=env)
    assert r2.returncode == 0, r2.stderr[-2000:]
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "saved" / "model.safetensors")), load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a target that exists and an unknown run id: clear messages, exit 2, nothing written
    r3 = cli("export", rep["run_id"], str(tmp_path / "exported"), env=env)
    assert r3.returncode == 2 and "not empty" in r3.stderr and "--overwrite" in r3.stderr
    r4 = cli("export", rep["run_id"][:-3] + "zzz", str(tmp_path / "nothing"), env=env)
    assert r4.returncode == 2 and "close matches: " + rep["run_id"] in r4.stderr
    assert not (tmp_path / "nothing").exists()


def test_cli_zeroshot_offline_refuses_hub_tasks_before_any_work(tiny_dir, tmp_path):
    env = {"PRUNING_LAB_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    r = cli("run", "--model", tiny_dir, "--calib", "pydoc", "--nsamples", "2", "--seqlen", "32",
             "--zeroshot", "wiki-lastword,boolq", "--device", "cpu", env=env, timeout=300)
    assert r.returncode == 2
    assert "boolq need the Hugging Face hub" in r.stderr and "offline, use: wiki-lastword" in r.stderr
    assert "Traceback" not in r.stderr
