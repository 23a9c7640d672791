"""The app in a real browser: Debian chromium driven by Playwright (marker ``browser``).

Opens the page, sets a tiny calibration, runs a job, waits until the per-layer chart has bars, checks the result
cards and the generations, opens the lab and waits for its plots, opens Compare; saves screenshots.

* ``test_prune_and_lab_in_browser`` -- a tiny random-init Llama saved to a temp dir (fast).
* ``test_screenshots_real_model``   -- the embedded SmolLM2 (marker ``slow`` too); with
  ``PRUNING_LAB_SCREENSHOTS=assets/screenshots`` it writes the commit-ready screenshots there.

Needs /usr/bin/chromium (``apt-get install -y chromium``) and the ``playwright`` package (no browser download).
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from pruning.results import ResultStore
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


def _launch(tmp: Path, precomputed: Path | None = None, warm=()):
    """A server as app.py starts it (warm-up, then the app with its own JobRunner), on a private result store.
    ``warm``: the models warm_up loads (app.py: the embedded one; the tiny-model tests need none)."""
    from ui import build_app, launch_kwargs, warm_up

    warm_up(models=warm)
    store = ResultStore(tmp / "cache")
    demo = build_app(store=store, precomputed_dir=precomputed)
    runner = demo.runner
    port = _free_port()
    kw = launch_kwargs()
    kw.update(server_name="127.0.0.1", server_port=port)
    with _patient_startup_check():
        demo.queue(default_concurrency_limit=1).launch(prevent_thread_lock=True, quiet=True, **kw)
    return demo, runner, f"http://127.0.0.1:{port}/"


@contextlib.contextmanager
def _patient_startup_check(deadline_s: float = 120.0):
    """Gradio's launch gives the new server one 3-second HEAD request (×5) before it declares localhost unreachable;
    on the shared 2-core test machine under load that is too short. Same check, with a deadline."""
    import httpx
    from gradio import networking

    original = networking.url_ok

    def url_ok(url: str) -> bool:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                if httpx.head(url, timeout=10, verify=False).status_code in (200, 301, 302, 303, 307, 308, 401):
                    return True
            except (httpx.ConnectError, httpx.TimeoutException):
                pass
            time.sleep(0.5)
        return False

    networking.url_ok = url_ok
    try:
        yield
    finally:
        networking.url_ok = original


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


def _wait_points(page, plot: str, n: int, timeout_s: float) -> None:
    page.wait_for_function(f"document.querySelectorAll('{plot} .js-plotly-plot .point').length >= {n}", timeout=timeout_s * 1000)


def drive(page, url: str, out: Path, model: str, calib=(2, 64), evals=(2, 64), lab=(2, 64), solver: str | None = None,
          prune_timeout_s: int = 120, lab_projection: str | None = None, running_points: int = 7, done_points: int = 14,
          lab_blocks: int = 2) -> dict:
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
    # Run reads the form itself (no need to wait for the live config preview)
    page.get_by_role("button", name="▶ Run").click()
    page.wait_for_function(f"document.querySelectorAll('#layer-plot .js-plotly-plot .point').length >= {running_points}",
                           timeout=prune_timeout_s * 1000)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / "prune-running.png"), full_page=False)
    seen["points_while_running"] = page.evaluate("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length")
    seen["state_while_running"] = page.evaluate("document.querySelector('#progress .pl-progress').dataset.state")
    page.wait_for_selector('#progress .pl-progress[data-state="done"]', timeout=prune_timeout_s * 1000)
    _wait_points(page, "#layer-plot", done_points, 30)  # the final chart is drawn
    page.wait_for_function("document.querySelector('#estimate').innerText.includes('In the cache')", timeout=30_000)
    seen["estimate_after"] = page.locator("#estimate").inner_text()
    seen["points_done"] = page.evaluate("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length")
    seen["generations"] = page.locator("text=Dense").count() > 0 and page.locator("text=Pruned").count() > 0
    seen["cards"] = page.locator("text=pruned perplexity").count()
    page.screenshot(path=str(out / "prune.png"), full_page=True)

    page.get_by_role("tab", name="ADMM vs greedy").click()
    lab_model = _visible(page.get_by_label("Model", exact=True))
    if lab_model.input_value() != model:
        lab_model.fill(model)
        lab_model.press("Enter")
        # the block / projection pickers follow the model
        page.wait_for_function(f"document.querySelector('#lab-block input[type=range]').max == '{lab_blocks - 1}'", timeout=60_000)
    if lab_projection:
        proj = page.get_by_label("Projection", exact=True)
        proj.fill(lab_projection)
        proj.press("Enter")
    _set_number(page, "Calib windows", lab[0])
    _set_number(page, "Tokens", lab[1])
    page.get_by_role("button", name="▶ Run on this layer").click()
    # the page opens on the shipped precomputed layer: wait for this run's own result
    page.wait_for_function("document.querySelector('#lab-status').innerText.includes('✓ Block')", timeout=prune_timeout_s * 1000)
    page.wait_for_function("document.querySelectorAll('#lab-err-plot .scatterlayer .trace').length >= 2", timeout=30_000)
    page.wait_for_selector("#lab-mask-plot .heatmaplayer, #lab-mask-plot .hm", timeout=30_000)
    seen["lab_traces"] = page.evaluate("document.querySelectorAll('#lab-err-plot .scatterlayer .trace').length")
    seen["lab_status"] = page.locator("#lab-status").inner_text()
    page.screenshot(path=str(out / "lab.png"), full_page=True)

    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelectorAll('#tradeoff-plot .scatterlayer .point').length >= 1", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length >= 1", timeout=30_000)
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
    assert seen["estimate_after"].startswith("In the cache: instant")  # issue 15.10: the same form again
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
    demo, runner, url = _launch(tmp_path, precomputed=root / "assets" / "precomputed", warm=("smollm2-135m",))
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    try:
        seen = drive(page, url, out, "smollm2-135m", calib=(4, 128), evals=(4, 128), lab=(8, 256), prune_timeout_s=2000,
                     running_points=7 * 12, done_points=30 * 7, lab_blocks=30)
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
    page.get_by_role("button", name="▶ Run").click()  # Run reads the form itself


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
        queued_text = _progress(b, "position 1 in the queue", 60)
        _visible(a.get_by_role("button", name="■ Cancel")).click()
        a.wait_for_selector('#progress .pl-progress[data-state="cancelled"]', timeout=60_000)
        _wait_points(a, "#layer-plot", 1, 30)
        cancelled_text = a.locator("#progress").inner_text()
        bars_a = a.evaluate("document.querySelectorAll('#layer-plot .js-plotly-plot .point').length")
        b.wait_for_selector('#progress .pl-progress[data-state="done"]', timeout=120_000)
        _wait_points(b, "#layer-plot", 12 * 7, 30)
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


# ---------------------------------------------------------------------------------------------------------------------
# The page as a new user meets it (issue 15): one server with a tiny model and the shipped precomputed sweep, a fresh
# page per test at 1280×900.
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from gradio_client import Client

    tmp = tmp_path_factory.mktemp("site")
    tiny = tmp / "tiny-llama"
    save_pretrained(*tiny_model("llama", seed=0), tiny)
    root = Path(__file__).resolve().parent.parent
    demo, runner, url = _launch(tmp, precomputed=root / "assets" / "precomputed")
    # one run of "yours" for Compare (through the public API, as a script would)
    cfg = {"model": str(tiny), "solver": "wanda", "sparsity": 0.5, "calib": {"nsamples": 2, "seqlen": 64},
           "eval": {"windows": 2, "seqlen": 64}, "max_new_tokens": 4}
    Client(url, verbose=False).predict(cfg, api_name="/prune")
    try:
        yield {"url": url, "tiny": str(tiny), "runner": runner, "demo": demo, "tmp": tmp}
    finally:
        runner.shutdown()
        demo.close()


@pytest.fixture
def page(browser, site):
    pg = browser.new_page(viewport=VIEWPORT)
    pg.goto(site["url"])
    pg.wait_for_selector("#layer-plot .js-plotly-plot", timeout=60_000)
    _wait_estimate(pg, "Estimated time")  # the page has hydrated and the first preview ran
    try:
        yield pg
    finally:
        pg.close()


def _wait_estimate(page, text: str, timeout_s: float = 60) -> str:
    page.wait_for_function("t => document.querySelector('#estimate').innerText.includes(t)", arg=text, timeout=timeout_s * 1000)
    return page.locator("#estimate").inner_text()


def _toast(page, text: str, timeout_s: float = 30) -> str:
    page.wait_for_function("t => Array.from(document.querySelectorAll('[data-testid=toast-body]')).some(e => e.innerText.includes(t))",
                           arg=text, timeout=timeout_s * 1000)
    return "\n".join(page.locator("[data-testid=toast-body]").all_inner_texts())


def _progress(page, text: str, timeout_s: float = 30) -> str:
    page.wait_for_function("t => document.querySelector('#progress').innerText.includes(t)", arg=text, timeout=timeout_s * 1000)
    return page.locator("#progress").inner_text()


def _type(page, selector: str, value) -> None:
    box = page.locator(selector).first
    box.fill(str(value))
    box.press("Tab")


def test_run_is_above_the_fold_and_the_api_link_is_visible(page):
    """15.11: the primary action without scrolling at 1280×900. 15.4: a visible link to the API page."""
    run = page.locator("#run-btn").bounding_box()
    assert run is not None and run["y"] + run["height"] <= VIEWPORT["height"], run
    link = page.locator("#api-link")
    assert link.is_visible() and link.inner_text().startswith("API")
    box = link.bounding_box()
    assert box["y"] + box["height"] <= VIEWPORT["height"] and box["x"] + box["width"] <= VIEWPORT["width"]
    link.click()
    page.wait_for_function("document.body.innerText.includes('/prune')",
                           timeout=30_000)
    assert "view=api" in page.url


@pytest.mark.parametrize("typed", ["1.2", "-0.3"])
def test_sparsity_out_of_range_is_refused_not_clamped(page, site, typed):
    """15.1: typed in the number box, refused with the README's message, never silently changed, no job started."""
    jobs_before = len(site["runner"]._jobs)
    _type(page, "#sparsity input", typed)
    msg = f"sparsity: {typed} is outside the allowed range [0, 1)"
    assert _wait_estimate(page, msg).startswith("⚠")  # said before Run, where the estimate is
    assert page.locator("#sparsity input").first.input_value() == typed  # not clamped
    page.locator("#run-btn").click()
    assert msg in _toast(page, msg)
    assert "Invalid setting" in _progress(page, msg)
    assert len(site["runner"]._jobs) == jobs_before  # nothing ran


def test_number_bounds_name_the_field_and_the_estimate_recovers(page):
    """15.5 / 15.9: a bound error names the field as the page shows it; fixing it brings the estimate back."""
    _open_accordion(page, "Calibration and evaluation", "Calibration windows")
    _set_number(page, "Calibration windows", 0)
    text = _wait_estimate(page, "Calibration windows (nsamples): 0 is out of range")
    assert "less than minimum" not in text
    _set_number(page, "Eval tokens per window", "")
    _wait_estimate(page, "Eval tokens per window: empty")
    _set_number(page, "Eval tokens per window", 64)
    _set_number(page, "Calibration windows", 2)
    assert "⚠" not in _wait_estimate(page, "Estimated time")
    assert "less than minimum" not in page.locator("body").inner_text()


def test_unknown_text_source_keeps_angle_brackets_and_no_class_name(page):
    """15.6 / 15.8: checked before Run; the toast keeps '<pasted text>' and has no 'DataError:' prefix."""
    _open_accordion(page, "Calibration and evaluation", "Calibration windows")
    src = _visible(page.get_by_label("Text", exact=True))
    src.fill("no-such-text-source")
    src.press("Enter")
    est = _wait_estimate(page, "unknown source")
    assert "text:<pasted text>, or a path to a UTF-8 text, .json, .jsonl or .parquet file" in est and "DataError" not in est
    page.locator("#run-btn").click()
    toast = _toast(page, "unknown source")
    assert "text:<pasted text>, or a path to a UTF-8 text, .json, .jsonl or .parquet file" in toast and "DataError" not in toast
    assert est.lstrip("⚠ ").startswith("Text (calib.source): unknown source")


def test_cheap_checks_before_run_and_a_new_failure_replaces_the_old(page, site):
    """15.8: a pattern that does not divide the model's widths, a bad model id: in the estimate line before Run; the
    bar shows the latest failure, not the previous one."""
    model = _visible(page.get_by_label("Model", exact=True))
    model.fill(site["tiny"])
    model.press("Enter")
    _wait_estimate(page, "Estimated time")
    pat = _visible(page.get_by_label("Pattern", exact=True))
    pat.fill("5:7")
    pat.press("Enter")
    est = _wait_estimate(page, "pattern: 5:7")
    assert "this model's input widths: 64, 128" in est
    page.locator("#run-btn").click()
    _progress(page, "pattern: 5:7")
    pat.fill("unstructured")
    pat.press("Enter")
    _type(page, "#sparsity input", "1.2")
    page.locator("#run-btn").click()
    bar = _progress(page, "sparsity: 1.2")
    assert "5:7" not in bar  # the earlier failure's text is gone
    _type(page, "#sparsity input", "0.5")
    model.fill("/no/such/model-dir")
    model.press("Enter")
    assert "is not a model directory" in _wait_estimate(page, "model:")


def test_about_table_and_glossary(page):
    """15.2: every solver is one row of four cells (the '|W|' of a summary no longer splits it), names never wrap,
    the paper links are there. 15.13: the glossary defines the terms the Prune tab uses."""
    from pruning import SOLVERS

    page.get_by_role("tab", name="About").click()
    page.wait_for_selector("#about-solvers", timeout=30_000)
    rows = page.evaluate("""Array.from(document.querySelectorAll('#about-solvers tbody tr')).map(tr => {
        const c = Array.from(tr.children), range = document.createRange();
        range.selectNodeContents(c[0]);  // one client rect per line the name occupies
        const tops = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top)));
        return {cells: c.map(x => x.innerText.trim()), links: tr.querySelectorAll('a').length, nameLines: tops.size};
    })""")
    assert [r["cells"][0] for r in rows] == SOLVERS.names()
    assert all(len(r["cells"]) == 4 and r["nameLines"] == 1 for r in rows), rows
    by = {r["cells"][0]: r for r in rows}
    assert "|W|" in by["magnitude"]["cells"][2] and by["wanda"]["links"] == 1 and by["ria"]["links"] == 1
    glossary = page.locator("#glossary").inner_text()
    for term in ("OBS", "inverse Hessian", "Gram", "ρ", "FW gap"):
        assert term in glossary, term


def test_lab_opens_on_a_precomputed_layer_with_readable_controls(page):
    """15.14: every lab figure within 2 s of opening the tab. 15.13: slider maxima not clipped, '96' on one line,
    plain log-axis labels (no bare minor digits such as '2' or '5')."""
    figs = ["#lab-err-plot", "#lab-resid-plot", "#lab-sched-plot", "#lab-mask-plot", "#lab-hist-plot", "#lab-fw-plot"]
    # 2 s on an idle machine; the shared test machine's load stretches it (load per core, at most 5×)
    load = max(1.0, min(5.0, os.getloadavg()[0] / (os.cpu_count() or 1)))
    page.evaluate("window.__labT0 = performance.now()")
    page.get_by_role("tab", name="ADMM vs greedy").click()
    shown = page.wait_for_function(
        "ids => ids.every(id => { const p = document.querySelector(id + ' .js-plotly-plot');"
        " return p && p.data && p.data.length > 0 && p.querySelector('.trace, .hm'); }) && performance.now() - window.__labT0",
        arg=figs, timeout=30_000, polling="raf").json_value()
    print(f"lab figures drawn {shown:.0f} ms after the click (load per core {load:.1f})")
    assert shown <= 2000 * load, f"{shown:.0f} ms"
    assert "Precomputed layer" in page.locator("#lab-status").inner_text()
    clipped = page.evaluate("""['#lab-row', '#lab-col', '#lab-block'].flatMap(id =>
        Array.from(document.querySelectorAll(id + ' span, ' + id + ' input[type=number]'))
             .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => id + ': ' + (e.value || e.innerText)))""")
    assert not clipped, clipped
    assert page.locator("#lab-row [data-testid=max-value]").inner_text() == "568"
    heights = page.evaluate("""Array.from(document.querySelectorAll('#lab-window label')).map(l => {
        const s = l.querySelector('span'); return [s.innerText, s.getBoundingClientRect().height,
        parseFloat(getComputedStyle(s).lineHeight) || 20]; })""")
    assert [h[0] for h in heights] == ["24", "48", "96"] and all(h[1] < 1.5 * h[2] for h in heights), heights
    ticks = page.evaluate("""Array.from(document.querySelectorAll('#lab-err-plot .ytick text, #lab-hist-plot .ytick text,'
                           + ' #lab-resid-plot .ytick text')).map(t => t.textContent)""")
    assert ticks and not [t for t in ticks if t in ("2", "3", "5")], ticks
    ylabels = page.evaluate("Array.from(document.querySelectorAll('#lab-resid-plot .ytitle')).map(t => t.textContent)")
    assert ylabels and "‖" not in ylabels[0] and "W′" not in ylabels[0]


def test_compare_marks_yours_and_shows_cost_view(page):
    """15.12: your runs filled and outlined with a '(yours)' hover, 'dense' visible in the legend, run pickers' labels
    not cut, the key columns on screen, and perplexity against prune time as a second view."""
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_function("document.querySelectorAll('#tradeoff-plot .scatterlayer .point').length >= 10", timeout=30_000)
    traces = page.evaluate("document.querySelector('#tradeoff-plot .js-plotly-plot').data.map(t => ({g: t.legendgroup, "
                           "h: t.hovertemplate || '', s: t.marker && t.marker.symbol, o: t.marker && t.marker.line && t.marker.line.color}))")
    yours = [t for t in traces if t["g"] == "runs"]
    pre = [t for t in traces if t["g"] == "precomputed"]
    assert yours and pre and len(pre) >= 15  # the shipped sweep: a long legend
    assert all(t["s"] == "circle" and t["o"] and "(yours)" in t["h"] for t in yours)
    assert all(t["s"] == "circle-open" and "(precomputed)" in t["h"] for t in pre)
    inside = page.evaluate("""(() => {
        const plot = document.querySelector('#tradeoff-plot .js-plotly-plot').getBoundingClientRect();
        const item = Array.from(document.querySelectorAll('#tradeoff-plot .legend .legendtext'))
                          .find(t => t.textContent.startsWith('dense'));
        if (!item) return false;
        const r = item.getBoundingClientRect();
        const clip = document.querySelector('#tradeoff-plot .legend .scrollbox');
        const box = clip ? clip.getBoundingClientRect() : plot;
        return r.height > 0 && r.top >= Math.max(plot.top, box.top) - 1 && r.bottom <= Math.min(plot.bottom, box.bottom) + 1;
    })()""")
    assert inside, "the 'dense' legend entry is scrolled out of view"
    cut = page.evaluate("""Array.from(document.querySelectorAll('.pl-nowrap input')).filter(i => i.scrollWidth > i.clientWidth + 1)
                           .map(i => i.value)""")
    assert not cut, cut
    heads = page.evaluate("""Array.from(document.querySelectorAll('#runs-table thead th')).map(th => {
        const r = th.getBoundingClientRect(); return [th.innerText.trim(), r.right]; })""")
    keys = {name: right for name, right in heads if name in ("solver", "pattern", "sparsity", "pruned ppl", "ppl ×", "prune s")}
    assert len(keys) == 6 and max(keys.values()) <= VIEWPORT["width"], heads
    # the overlay shows the two runs the pickers name (the newest: yours first), not a stale pair
    names = page.evaluate("(document.querySelector('#overlay-plot .js-plotly-plot').data || []).map(t => t.name)")
    picked = page.locator(".pl-nowrap input").first.input_value()
    assert names and "yours" in picked and names[0] == picked.split(" · ")[0], (names, picked)
    page.get_by_role("tab", name="Perplexity vs prune time").click()
    page.wait_for_function("document.querySelectorAll('#cost-plot .scatterlayer .point').length >= 10", timeout=30_000)
    xtitle = page.evaluate("document.querySelector('#cost-plot .xtitle').textContent")
    assert "time spent pruning" in xtitle


def test_export_after_a_run_offers_the_zip(page, site):
    """Export on a finished run: the folder is written on the server and the .zip appears as a download link."""
    site["demo"].pruning_lab.exports_dir = site["tmp"] / "exports"
    _start_job(page, site["url"], site["tiny"], "wanda")
    page.wait_for_selector('#progress .pl-progress[data-state="done"], #progress .pl-progress[data-state="failed"]',
                           timeout=240_000)
    state = page.locator("#progress .pl-progress").get_attribute("data-state")
    assert state == "done", page.locator("#progress").inner_text()  # a failure shows its message here
    page.locator("#export-btn").click()
    page.wait_for_function("Array.from(document.querySelectorAll('#export-file a[data-testid=download-link]'))"
                           ".some(a => (a.getAttribute('download') || '').endsWith('.zip'))", timeout=120_000)
    assert "Exported run" in page.locator("#export-msg").inner_text()
    assert any((site["tmp"] / "exports").glob("*/model.safetensors"))
