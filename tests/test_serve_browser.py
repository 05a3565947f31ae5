"""The web page in headless Chromium (Debian's, driven by Playwright): upload, see decision + overlay."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip
from serve_helpers import encode, server_in_thread, texture, tiny_detector

from anomalens.serve import ModelRegistry, ServeSettings, create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.mark.browser
def test_page_scores_uploaded_images(tmp_path, monkeypatch):
    sync_playwright = browser_or_skip()
    monkeypatch.setenv("ANOMALENS_TEST_PAGE_KEY", "k3y")
    det = tiny_detector()
    registry = ModelRegistry()
    registry.add("tiny", det)
    registry.add("second", tiny_detector())
    files = []
    for i, defect in enumerate([False, True]):
        path = tmp_path / f"part{i}.png"
        path.write_bytes(encode(texture(20 + i, defect=defect)))
        files.append(path)
    (tmp_path / "notes.png").write_bytes(b"this is text, not an image")
    expected = [r.decision for r in det.predict([str(p) for p in files])]
    assert expected == ["OK", "NG"]

    app = create_app(registry, ServeSettings(api_key_env="ANOMALENS_TEST_PAGE_KEY"))
    with server_in_thread(app) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto(base + "/")
            page.wait_for_selector("#status:has-text('missing or wrong API key')")
            page.fill("#api-key", "k3y")
            page.dispatch_event("#api-key", "change")
            page.wait_for_selector("#status:has-text('2 models loaded')")
            assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == ["second", "tiny"]
            page.select_option("#model", "tiny")
            assert "patchknn on efficientnet-lite0" in page.text_content("#model-info")

            page.set_input_files("#files", [str(f) for f in files])
            page.wait_for_function("document.querySelectorAll('.card[data-decision]').length == 2")
            # Newest first: the cards and the table rows are in reverse upload order.
            decisions = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.decision)")
            assert decisions == expected[::-1]
            overlays = page.eval_on_selector_all(
                ".card img.overlay", "is => is.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            assert overlays == [[True, 56, 48], [True, 56, 48]]
            rows = page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => r.cells[4].textContent)")
            assert rows == expected[::-1]

            page.set_input_files("#files", str(tmp_path / "notes.png"))
            page.wait_for_selector(".card.failed")
            assert "not_an_image" in page.text_content(".card.failed .verdict")
            assert (
                page.text_content("#counts") == f"(3: {expected.count('OK')} OK, {expected.count('NG')} NG, 1 failed)"
            )

            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("ANOMALENS_SERVE_SCREENSHOT"):  # keep a copy (docs/serve_page.png)
                shutil.copy(shot, os.environ["ANOMALENS_SERVE_SCREENSHOT"])
            # Everything came from the service itself (or was made in the page): no CDN, no network.
            assert all(u.startswith((base, "data:", "blob:")) for u in requests), requests
        finally:
            browser.close()
