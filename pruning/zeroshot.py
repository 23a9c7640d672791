"""Zero-shot accuracy with EleutherAI's lm-evaluation-harness, on the in-memory model (``HFLM``, no reload).

Tasks:

* ``wiki-lastword`` (local, offline): LAMBADA-style last-word prediction on held-out paragraphs of the embedded
  Wikipedia evaluation split (articles ``i % 4 == 3``, never used for calibration). Each item is a paragraph's
  text up to its last word (at most ``CONTEXT_WORDS`` words of context) and that word as the target; ``acc`` is the
  share of items whose target is the model's greedy continuation, ``perplexity`` the target's perplexity. The
  items are written once (``<cache>/lm-eval/wiki-lastword``, a JSON-lines file and a task YAML that lm-eval loads
  with its ``json`` dataset builder) and are the same on every machine.
* the pruning papers' list (``PAPER_TASKS``: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge,
  openbookqa) and any other lm-eval task by name: their datasets come from the Hugging Face hub, so they need the
  network; offline they are refused before anything runs, with a message naming them.

lm-eval is an optional extra (``pip install -r requirements-eval.txt``); without it ``--zeroshot`` says so.
"""
from __future__ import annotations

import os
import threading

import json
import re
from pathlib import Path

from .errors import InputError

LOCAL_TASKS = ("wiki-lastword",)
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
INSTALL = "pip install -r requirements-eval.txt   (lm-eval==0.4.13)"
CONTEXT_WORDS = 160  # words of context before the target (bounds one item's length)
MIN_WORDS = 40       # paragraphs shorter than this are not used
TASK_VERSION = 1
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[A-Za-z]$")


class ZeroShotError(InputError):
    """A zero-shot request that cannot run (unknown task, lm-eval missing, a hub task offline)."""


def parse_tasks(text) -> list[str]:
    """'wiki-lastword, boolq' or a list -> de-duplicated names (order kept); empty -> []."""
    if text is None:
        return []
    items = text if isinstance(text, (list, tuple)) else str(text).replace(";", ",").split(",")
    out = []
    for t in items:
        t = str(t).strip()
        if t and t not in out:
            out.append(t)
    return out


def check_tasks(tasks: list[str], hub_reachable: bool | None = None) -> list[str]:
    """Validate before any computation: lm-eval importable, and hub tasks only when the hub is reachable."""
    tasks = parse_tasks(tasks)
    if not tasks:
        return []
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ZeroShotError(f"zero-shot tasks: lm-eval is not installed; install it with: {INSTALL}") from None
    for t in tasks:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", t):
            raise ZeroShotError(f"zero-shot tasks: {t!r} is not a task name; allowed: {', '.join(LOCAL_TASKS)} "
                                f"(offline), {', '.join(PAPER_TASKS)} or another lm-eval task (need the hub)")
    remote = [t for t in tasks if t not in LOCAL_TASKS]
    if remote:
        if hub_reachable is None:
            hub_reachable = _hub_reachable()
        if not hub_reachable:
            raise ZeroShotError(
                f"zero-shot tasks: {', '.join(remote)} need the Hugging Face hub (their datasets are downloaded), "
                f"which is not reachable from here; offline, use: {', '.join(LOCAL_TASKS)}")
    return tasks


def _hub_reachable() -> bool:
    from .settings import hub_offline, hub_reachable

    return not hub_offline() and hub_reachable()


# ---------------------------------------------------------------------------------------------------------------
# the local task

def lastword_items(documents: list[str], limit: int | None = None) -> list[dict]:
    """(context, target) items: per paragraph, its last alphabetic word is the target (trailing punctuation
    dropped), the preceding ``CONTEXT_WORDS`` words the context. Deterministic for the same documents."""
    items = []
    for doc in documents:
        for para in re.split(r"\n\s*\n|\n", doc):
            words = para.split()
            if len(words) < MIN_WORDS:
                continue
            last = words[-1].rstrip(".,;:!?\"')]")
            if not _WORD.match(last) or len(last) < 3:
                continue
            ctx = " ".join(words[:-1][-CONTEXT_WORDS:])
            items.append({"context": ctx, "target": last})
            if limit and len(items) >= limit:
                return items
    return items


def task_dir() -> Path:
    from .settings import cache_dir

    return Path(cache_dir()) / "lm-eval" / f"wiki-lastword-v{TASK_VERSION}"


def build_local_task(directory: Path | None = None) -> Path:
    """Write (once) the wiki-lastword items and its lm-eval task YAML; returns the folder to include."""
    from .data import load_documents

    d = Path(directory) if directory is not None else task_dir()
    data, yaml_path = d / "wiki_lastword.jsonl", d / "wiki_lastword.yaml"
    if data.is_file() and yaml_path.is_file():
        return d
    d.mkdir(parents=True, exist_ok=True)
    items = lastword_items(load_documents("wiki-sample", "eval"))
    tmp = data.with_name(f"{data.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
    tmp.replace(data)
    spec = {
        "task": "wiki-lastword",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "loglikelihood",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{' ' + target}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
        "metadata": {"version": TASK_VERSION},
    }
    import yaml

    tmp = yaml_path.with_name(f"{yaml_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    tmp.replace(yaml_path)
    return d


# ---------------------------------------------------------------------------------------------------------------
# evaluation

_METRICS = ("acc", "acc_norm", "perplexity")


def evaluate_zeroshot(model, tokenizer, tasks, limit: int | None = 100, batch_size: int = 8) -> dict:
    """``{task: {acc, acc_norm?, perplexity?, n}}`` for ``model`` as it is in memory (no copy, no reload).

    ``limit``: items per task (None: all). Deterministic (lm-eval seeds fixed)."""
    tasks = check_tasks(tasks)
    if not tasks:
        return {}
    import logging

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    include = [str(build_local_task())] if any(t in LOCAL_TASKS for t in tasks) else None
    tm = TaskManager(include_path=include) if include else TaskManager()
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ZeroShotError(f"zero-shot tasks: unknown task {', '.join(map(repr, unknown))}; allowed: "
                            f"{', '.join(LOCAL_TASKS)} (offline), {', '.join(PAPER_TASKS)} or another lm-eval task")
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(p.device),
                  dtype=p.dtype, trust_remote_code=False)
        with torch.no_grad():
            out = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, bootstrap_iters=0,
                                  log_samples=False, verbosity="ERROR")
    finally:
        model.train(was_training)
    res = {}
    for t in tasks:
        r = (out or {}).get("results", {}).get(t, {})
        vals = {}
        for k, v in r.items():
            base = k.split(",")[0]
            if base in _METRICS and isinstance(v, (int, float)):
                vals[base] = float(v)
        n = (out or {}).get("n-samples", {}).get(t, {})
        vals["n"] = int(n.get("effective", n.get("original", 0)) if isinstance(n, dict) else 0)
        res[t] = vals
    return res
