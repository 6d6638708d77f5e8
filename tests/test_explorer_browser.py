"""The explorer end to end in a real headless Chromium (Debian's package, driven by Playwright) against uvicorn
on a free loopback port: the index, a feature page, the live box, steering, and clear error pages.

Screenshots of the main pages go to a temporary folder, and also to artifacts/screenshots/ in the repository
when the environment variable LMSCOPE_SCREENSHOTS is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from .test_explorer import D_SAE, NEURON_SITE, make_runs, tiny_model

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (scripts/setup.sh installs it: apt-get install -y chromium)",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
uvicorn = pytest.importorskip("uvicorn")

from lmscope.explorer import create_app  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def server(tmp_path_factory, model):
    """(base URL, run ids by kind, runs folder): uvicorn in a thread on 127.0.0.1, stopped at the end."""
    root = tmp_path_factory.mktemp("runs")
    make_runs(root, model)
    app = create_app(root, model=model)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the explorer server did not start")
        time.sleep(0.05)
    ids = {r.kind: r.id for r in app.state.explorer.catalog.runs}
    yield f"http://127.0.0.1:{port}", ids, root
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    yield pg
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Save a screenshot under a temporary folder (and artifacts/screenshots/ if LMSCOPE_SCREENSHOTS is set)."""
    folder = tmp_path_factory.mktemp("screenshots")
    keep = (
        Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
        if os.environ.get("LMSCOPE_SCREENSHOTS")
        else None
    )

    def save(pg, name: str) -> Path:
        path = folder / f"{name}.png"
        pg.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 5000, f"screenshot {name} looks empty"
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)
        return path

    return save


def test_index_lists_runs(server, page, shots):
    base, ids, _ = server
    resp = page.goto(base + "/")
    assert resp.status == 200
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 4
    text = page.locator("#runs").inner_text()
    for title in ("Context neurons", "Tiny SAE", "Sparse probes", "IOI patching"):
        assert title in text
    shots(page, "01_index")
    page.click("text=Tiny SAE")
    page.wait_for_selector("#units tbody tr")
    assert page.url == f"{base}/runs/{ids['sae']}"
    assert page.locator("#units tbody tr").count() == 50
    shots(page, "02_feature_list")


def test_feature_page_shows_highlighted_tokens_and_histogram(server, page, shots):
    base, ids, _ = server
    page.goto(f"{base}/runs/{ids['sae']}?sort=max_act")
    page.locator("#units tbody tr a").first.click()  # the feature with the largest activation
    page.wait_for_selector("#top-examples .tok")
    toks = page.locator("#top-examples .tok")
    assert toks.count() > 10
    backgrounds = toks.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    lit = [b for b in backgrounds if b.startswith("rgba(249, 115, 22") and not b.endswith(", 0)")]
    assert lit, "no highlighted token"
    peak = page.locator("#top-examples .tok.peak").first
    assert "activation" in peak.get_attribute("title")
    hist = page.locator("#histogram svg")
    assert hist.is_visible() and page.locator("#histogram svg rect").count() > 1
    assert hist.bounding_box()["width"] > 250
    shots(page, "03_feature_page")


def test_live_box_returns_activations_without_reload(server, page, shots, model):
    base, ids, _ = server
    page.goto(f"{base}/runs/{ids['neurons']}/units/2")
    page.evaluate("window.__marker = 'same page'")
    text = "the dog ran to the mat and then the cat sat"
    page.fill("#live-form textarea", text)
    page.click("#live-run")
    page.wait_for_selector("#live-result .tok")
    assert page.evaluate("window.__marker") == "same page"  # no full reload
    toks = page.locator("#live-result .tok")
    assert toks.all_inner_texts() == text.split()
    acts = [float(a) for a in toks.evaluate_all("els => els.map(e => e.dataset.act)")]
    _, cache = model.run_with_cache(model.to_tokens(text, prepend_bos=True))
    expect = cache[NEURON_SITE][0, 1:, 11].tolist()  # unit 2 of the neuron run is neuron 11
    assert acts == pytest.approx(expect, abs=1e-3)
    page.fill("#steer-form input[name=scale]", "40")
    page.fill("#steer-form input[name=n_tokens]", "8")
    page.click("#steer-run")
    page.wait_for_selector("#steer-result .steer pre")
    assert "steered (scale 40" in page.locator("#steer-result").inner_text()
    shots(page, "04_live_box")


def test_over_long_prompt_and_bad_ids_get_clear_errors(server, page, shots):
    base, ids, _ = server
    page.goto(f"{base}/runs/{ids['sae']}/units/3")
    page.evaluate(
        "document.querySelector('#live-form textarea').value = 'cat '.repeat(700)"
    )  # past maxlength
    page.click("#live-run")
    page.wait_for_selector("#live-result .error-box")
    assert "too long" in page.locator("#live-result .error-box").inner_text()

    resp = page.goto(f"{base}/runs/{ids['sae']}/units/1?text=" + "cat+" * 700)
    assert resp.status == 413
    assert "the limit is 2,000" in page.locator("#error-message").inner_text()
    resp = page.goto(f"{base}/runs/{ids['sae']}/units/{D_SAE + 5}")
    assert resp.status == 404
    assert f"units 0..{D_SAE - 1}" in page.locator("#error-message").inner_text()
    resp = page.goto(f"{base}/runs/no-such-run")
    assert resp.status == 404
    body = page.locator("body").inner_text()
    assert "no run with id 'no-such-run'" in body and "Traceback" not in body
    shots(page, "05_error_page")


def test_other_pages_render(server, page, shots):
    base, ids, _ = server
    page.goto(f"{base}/runs/{ids['neurons']}/units/0")
    page.wait_for_selector("#top-examples .tok")
    shots(page, "06_neuron_page")
    page.goto(f"{base}/runs/{ids['probe']}")
    assert (
        page.locator("#probe-curves svg").count() == 2
        and page.locator("#probe-curves svg").first.is_visible()
    )
    assert page.frame_locator("#report").locator("h1").inner_text() == "Probe report"
    shots(page, "07_probe_page")
    page.goto(f"{base}/runs/{ids['patching']}")
    frame = page.frame_locator("#report")
    assert "patching heatmap here" in frame.locator("#marker").inner_text()
    shots(page, "08_report_page")


def test_exported_page_loads_nothing_else(server, page, shots, tmp_path):
    from lmscope.explorer import export_page

    base, ids, root = server
    page.goto(f"{base}/runs/{ids['sae']}?sort=max_act")
    unit = page.locator("#units tbody tr a").first.inner_text()
    out = export_page(root, f"/runs/{ids['sae']}/units/{unit}", tmp_path / "feature.html")
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.as_uri())
    assert page.locator("#top-examples .tok").count() > 10 and page.locator("#histogram svg").is_visible()
    assert requests == [out.as_uri()], f"the export fetched {requests[1:]}"
    shots(page, "09_export_feature")
