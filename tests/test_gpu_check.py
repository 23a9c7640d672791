"""benchmarks/gpu_check.py: the GPU script's dry run (tiny model, automatic without a GPU) writes every section."""
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    import gpu_check

    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dry_run"] is True and res["finished"] is True and set(res["sections"]) == {"smollm2", "llama8b", "sparse_2of4"}
    assert all(s["ok"] for s in res["sections"].values()), {k: s.get("error") for k, s in res["sections"].items()}
    sm = res["sections"]["smollm2"]
    assert set(sm["runs"]) == {"sparsegpt batch=8", "admm batch=8", "sparsefw T=20 batch=8", "sparsegpt batch=1"}
    for run in sm["runs"].values():
        assert {"capture", "statistics", "solve", "propagate", "total"} <= set(run["phases"])
        assert abs(run["sparsity"] - 0.5) < 0.01
    assert sm["batched_vs_batch1"] > 0
    ll = res["sections"]["llama8b"]
    assert ll["masks_match"] is True and len(ll["offload_none"]["blocks"]) == len(ll["offload_cpu"]["blocks"]) == 2
    sp = res["sections"]["sparse_2of4"]
    assert sp["kernel"] is False and "no semi-structured" in sp["reason"] and len(sp["rows"]) == 2


def test_gpu_check_shell_wrapper_and_bad_section(tmp_path):
    out = tmp_path / "g.json"
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--only", "sparse_2of4",
                        "--out", str(out)], env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(json.loads(out.read_text())["sections"]) == ["sparse_2of4"]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--only", "nope", "--out",
                        str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--only: unknown section 'nope'; allowed: smollm2, llama8b, sparse_2of4" in r.stderr
