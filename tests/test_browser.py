"""The app in a real browser: Debian chromium driven by Playwright (marker ``browser``).

Opens the page, sets a tiny calibration, runs a job, waits until the per-layer chart has bars, checks the result
cards and the generations, opens the lab and waits for its plots, opens Compare; saves screenshots.

* ``test_prune_and_lab_in_browser`` -- a tiny random-init Llama saved to a temp dir (fast).
* ``test_screenshots_real_model``   -- the embedded SmolLM2 (marker ``slow`` too); with
  ``PRUNING_LAB_SCREENSHOTS=assets/screenshots`` it writes the commit-ready screenshots there.

Needs /usr/bin/chromium (``apt-get install -y chromium``) and the ``playwright`` package (no browser download).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from pruning.results import ResultStore
from pruning.jobs import JobRunner
from pruning.models import save_pretrained, tiny_model

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _launch(tmp: Path, precomputed: Path | None = None):
    from ui import build_app, launch_kwargs, warm_up

    warm_up()  # as app.py does before launch
    store = ResultStore(tmp / "cache")
    runner = JobRunner(store=store)
    demo = build_app(runner=runner, store=store, precomputed_dir=precomputed)
    port = _free_port()
    kw = launch_kwargs()
    kw.update(server_name="127.0.0.1", server_port=port)
    demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, quiet=True, **kw)
    return demo, runner, f"http://127.0.0.1:{port}/"


def _visible(locator, timeout_s: float = 20.0):
    """The first visible match (the same label exists on several tabs). Waits for it: a closed accordion renders its
    children only after the click, and a slow machine may take a while to open it."""
    deadline = time.monotonic() + timeout_s
    while True:
        for i in range(locator.count()):
            if locator.nth(i).is_visible():
                return locator.nth(i)
        if time.monotonic() > deadline:
            raise AssertionError(f"no visible element for {locator} after {timeout_s:.0f} s")
        time.sleep(0.2)


def _set_number(page, label: str, value) -> None:
    box = _visible(page.get_by_label(label, exact=True))
    box.fill(str(value))
    box.press("Tab")


def _open_accordion(page, title: str, inside_label: str, tries: int = 3) -> None:
    """Click an accordion's header until a control inside it is visible (a click that lands before the page has
    hydrated does nothing)."""
    for attempt in range(tries):
        page.get_by_text(title, exact=True).click()
        try:
            _visible(page.get_by_label(inside_label, exact=True), timeout_s=8)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def drive(page, url: str, out: Path, model: str, calib=(2, 64), evals=(2, 64), lab=(2, 64), solver: str | None = None,
          prune_timeout_s: int = 120, lab_projection: str | None = None, running_points: int = 7) -> dict:
    """Run a job and the lab through the page; returns what was observed. Screenshots go to ``out``."""
    seen = {}
    page.goto(url)
    page.wait_for_selector("#layer-plot .js-plotly-plot", timeout=60_000)
    model_box = _visible(page.get_by_label("Model", exact=True))
    model_box.fill(model)
    model_box.press("Enter")
    if solver:
        sb = _visible(page.get_by_label("Solver", exact=True))
        sb.fill(solver)
        sb.press("Enter")
    _open_accordion(page, "Calibration and evaluation", "Calibration windows")
    _set_number(page, "Calibration windows", calib[0])
    _set_number(page, "Tokens per window", calib[1])
    _set_number(page, "Eval windows (0 = all)", evals[0])
    _set_number(page, "Eval tokens per window", evals[1])
    page.get_by_text("Calibration and evaluation").click()  # fold it again for the screenshot
    page.wait_for_timeout(1500)  # the live config/estimate catch up (trigger_mode=always_last)
    page.get_by_role("button", name="▶ Run").click()
    page.wait_for_function(f"document.querySelectorAll('#layer-plot .js-plotly-plot .point').length >= {running_points}",
                           timeout=prune_timeout_s * 1000)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / "prune-running.png"), full_page=False)
    seen["points_while_running"] = page.evaluate("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length")
    seen["state_while_running"] = page.evaluate("document.querySelector('#progress .pl-progress').dataset.state")
    page.wait_for_selector('#progress .pl-progress[data-state="done"]', timeout=prune_timeout_s * 1000)
    page.wait_for_timeout(800)
    seen["points_done"] = page.evaluate("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length")
    seen["generations"] = page.locator("text=Dense").count() > 0 and page.locator("text=Pruned").count() > 0
    seen["cards"] = page.locator("text=pruned perplexity").count()
    page.screenshot(path=str(out / "prune.png"), full_page=True)

    page.get_by_role("tab", name="ADMM vs greedy").click()
    page.wait_for_timeout(500)
    lab_model = _visible(page.get_by_label("Model", exact=True))
    lab_model.fill(model)
    lab_model.press("Enter")
    page.wait_for_timeout(1500)  # block / projection pickers follow the model
    if lab_projection:
        proj = page.get_by_label("Projection", exact=True)
        proj.fill(lab_projection)
        proj.press("Enter")
    _set_number(page, "Calib windows", lab[0])
    _set_number(page, "Tokens", lab[1])
    page.get_by_role("button", name="▶ Run on this layer").click()
    page.wait_for_function("document.querySelectorAll('#lab-err-plot .scatterlayer .trace').length >= 2",
                           timeout=prune_timeout_s * 1000)
    page.wait_for_selector("#lab-mask-plot .heatmaplayer, #lab-mask-plot .hm", timeout=30_000)
    page.wait_for_timeout(1500)
    seen["lab_traces"] = page.evaluate("document.querySelectorAll('#lab-err-plot .scatterlayer .trace').length")
    seen["lab_status"] = page.locator("#lab-status").inner_text()
    page.screenshot(path=str(out / "lab.png"), full_page=True)

    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelectorAll('#tradeoff-plot .scatterlayer .point').length >= 1", timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(out / "compare.png"), full_page=True)
    return seen


def test_prune_and_lab_in_browser(browser, tmp_path):
    tiny = tmp_path / "tiny-llama"
    save_pretrained(*tiny_model("llama", seed=0), tiny)
    demo, runner, url = _launch(tmp_path)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    try:
        seen = drive(page, url, tmp_path, str(tiny), lab_projection="mlp.down_proj")
    finally:
        page.close()
        runner.shutdown()
        demo.close()
    assert seen["points_done"] == 2 * 7  # every layer of both blocks is a bar
    assert seen["points_while_running"] >= 7
    assert seen["generations"] and seen["cards"] >= 1
    assert seen["lab_traces"] >= 2 and "✓ Block" in seen["lab_status"]
    for name in ("prune.png", "lab.png", "compare.png"):
        assert (tmp_path / name).stat().st_size > 20_000


@pytest.mark.slow
def test_screenshots_real_model(browser, tmp_path):
    """Regenerates the README screenshots with SmolLM2 (several minutes on a 2-core CPU): opt-in."""
    if not os.environ.get("PRUNING_LAB_SCREENSHOTS"):
        pytest.skip("set PRUNING_LAB_SCREENSHOTS=assets/screenshots to regenerate the screenshots with SmolLM2 (minutes)")
    out = Path(os.environ["PRUNING_LAB_SCREENSHOTS"])
    out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    demo, runner, url = _launch(tmp_path, precomputed=root / "assets" / "precomputed")
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    try:
        seen = drive(page, url, out, "smollm2-135m", calib=(4, 128), evals=(4, 128), lab=(8, 256), prune_timeout_s=2000,
                     running_points=7 * 12)
    finally:
        page.close()
        runner.shutdown()
        demo.close()
    assert seen["points_done"] == 30 * 7
    assert seen["lab_traces"] >= 2


def _start_job(page, url: str, model: str, solver: str, options: dict | None = None, calib=(2, 64), evals=(2, 64)) -> None:
    """Fill the Prune form of a fresh page and press Run (does not wait for the job)."""
    page.goto(url)
    page.wait_for_selector("#layer-plot .js-plotly-plot", timeout=60_000)
    model_box = _visible(page.get_by_label("Model", exact=True))
    model_box.fill(model)
    model_box.press("Enter")
    sb = _visible(page.get_by_label("Solver", exact=True))
    sb.fill(solver)
    sb.press("Enter")
    if options:
        _open_accordion(page, "Solver options", next(iter(options)))
        for label, value in options.items():
            _set_number(page, label, value)
    _open_accordion(page, "Calibration and evaluation", "Calibration windows")
    _set_number(page, "Calibration windows", calib[0])
    _set_number(page, "Tokens per window", calib[1])
    _set_number(page, "Eval windows (0 = all)", evals[0])
    _set_number(page, "Eval tokens per window", evals[1])
    page.wait_for_timeout(1500)  # the live config catches up (trigger_mode=always_last)
    page.get_by_role("button", name="▶ Run").click()


def _state(page) -> str:
    return page.evaluate("(document.querySelector('#progress .pl-progress') || {dataset: {}}).dataset.state || ''")


def test_two_tabs_queue_and_cancel_in_browser(browser, tmp_path):
    """Two browser tabs: the second job waits with its queue position shown; Cancel in the first tab stops its job at
    the next layer and says so (the chart keeps the layers done so far); then the second tab's job runs to the end."""
    tiny = tmp_path / "tiny-deep"
    save_pretrained(*tiny_model("llama", seed=0, num_hidden_layers=12), tiny)  # 84 layers: SparseFW takes a while
    demo, runner, url = _launch(tmp_path)
    a = browser.new_page(viewport={"width": 1440, "height": 1000})
    b = browser.new_page(viewport={"width": 1440, "height": 1000})
    try:
        _start_job(a, url, str(tiny), "sparsefw", {"iters": 20000})
        a.wait_for_function("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length >= 1", timeout=120_000)
        assert _state(a) == "running"
        _start_job(b, url, str(tiny), "magnitude")
        b.wait_for_function("document.querySelector('#progress .pl-progress[data-state=\"queued\"]') !== null", timeout=60_000)
        queued_text = b.locator("#progress").inner_text()
        _visible(a.get_by_role("button", name="■ Cancel")).click()
        a.wait_for_selector('#progress .pl-progress[data-state="cancelled"]', timeout=60_000)
        a.wait_for_timeout(800)
        cancelled_text = a.locator("#progress").inner_text()
        bars_a = a.evaluate("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length")
        b.wait_for_selector('#progress .pl-progress[data-state="done"]', timeout=120_000)
        b.wait_for_timeout(800)
        bars_b = b.evaluate("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length")
        b.screenshot(path=str(tmp_path / "second-tab.png"), full_page=False)
        a.screenshot(path=str(tmp_path / "cancelled.png"), full_page=False)
    finally:
        a.close()
        b.close()
        runner.shutdown()
        demo.close()
    assert "position 1 in the queue" in queued_text
    assert "Cancelled" in cancelled_text and "untouched" in cancelled_text
    assert 1 <= bars_a < 12 * 7  # stopped part-way; the layers solved before the cancel stay on the chart
    assert bars_b == 12 * 7  # the other tab's job was not disturbed
