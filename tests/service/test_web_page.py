"""The web page in a real browser: Debian's chromium, driven by Playwright, against a real
``python -m derm_exp.serve`` process serving the tests' model (trained on generated demo data).

Upload an image, wait for the answer, check that the page shows the class the API gives, draws
the bar chart and the heat map (with a working opacity slider) and keeps the disclaimer in view;
save a screenshot (``DERM_EXP_SCREENSHOT=docs/images/web_app.png`` for the README's, else under
tmp). With ``CI`` set, a missing chromium or Playwright fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from derm_exp.config import PROJECT_ROOT
from derm_exp.inference.predictor import DISCLAIMER
from tests.inference.conftest import TrainedModel
from tests.service.live_server import serve

CHROMIUM = Path("/usr/bin/chromium")
# --no-sandbox: CI runs as root; the rest keep chromium from dialling out of a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser() -> None:
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("playwright missing (pip install -e '.[dev]')")
    if problems:
        message = "browser test needs " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _screenshot_path(tmp_path: Path) -> Path:
    wanted = os.environ.get("DERM_EXP_SCREENSHOT")
    if not wanted:
        return tmp_path / "web_app.png"
    path = Path(wanted)
    return path if path.is_absolute() else PROJECT_ROOT / path


@pytest.mark.slow
def test_upload_in_a_real_browser_shows_the_prediction(
    served_model: TrainedModel, tmp_path: Path
) -> None:
    _require_browser()
    from playwright.sync_api import sync_playwright

    from derm_exp.data.synthetic import generate_demo_dataset

    # A demo image at the generator's default size (the README's screenshot shows it).
    demo = generate_demo_dataset(tmp_path / "demo", n_images=60, seed=5)
    image = sorted((demo / "images").glob("*.jpg"))[0]
    store = f"tracking.uri={served_model.tracking_uri}"
    args = (f"model={served_model.run_id}", store, "device=cpu")
    with serve(*args, log=tmp_path / "serve.log") as url, sync_playwright() as p:
        api = httpx.post(
            f"{url}/predict", files={"image": (image.name, image.read_bytes(), "image/jpeg")}
        ).json()
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url + "/")
            page.wait_for_function(
                "document.getElementById('model-name').textContent.startsWith('Model:')"
            )
            assert page.locator("#disclaimer").is_visible()
            page.set_input_files("#file", str(image))
            page.wait_for_function(
                "['done', 'error'].includes(document.body.dataset.state)", timeout=60_000
            )
            assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#error")

            assert page.inner_text("#predicted-class") == api["predicted_class"]
            bars = page.locator("#chart rect.bar")
            assert bars.count() == len(api["probabilities"])
            top = page.locator("#chart rect.bar.top")
            assert top.get_attribute("data-cls") == api["predicted_class"]
            assert float(top.get_attribute("width")) > 0

            heat = page.locator("#heatmap")
            assert heat.is_visible()
            assert page.evaluate(
                "(() => { const h = document.getElementById('heatmap'); return h.complete"
                " && h.naturalWidth > 0 && h.src.startsWith('data:image/png'); })()"
            )
            page.locator("#opacity").fill("80")
            assert page.evaluate("document.getElementById('heatmap').style.opacity") == "0.8"
            page.locator("#opacity").fill("55")

            assert page.locator("#decision").is_visible()
            assert page.inner_text("#decision").strip()
            disclaimer = page.locator("#disclaimer")
            assert disclaimer.is_visible() and page.inner_text("#disclaimer").strip() == DISCLAIMER

            shot = _screenshot_path(tmp_path)
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
