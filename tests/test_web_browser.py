"""The web page in a real browser: Debian's chromium driven by Playwright, against the running
`msk web` app and the real tritonserver. Screenshots land in `test-artifacts/web/`.

No browser is downloaded: PyPI `playwright` launches `/usr/bin/chromium` (Debian's).
Set MSK_UPDATE_DOCS_SCREENSHOT=1 to refresh `docs/img/web.png` from the results screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from msk import RESEARCH_USE_NOTICE
from msk.constants import MURA_ENSEMBLE_MODEL, MURA_MEMBERS, WRIST_CLASSES
from tests.plugins.web import REPO_ROOT, encode, synthetic_radiograph

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RESULT_TIMEOUT_MS = 120_000

HEATMAP_STATS = """async (img) => {
  await img.decode();
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  for (let i = 0; i < d.length; i += 4) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  return {width: c.width, height: c.height, distinct: colours.size};
}"""


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(scripts/install_test_packages.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    script_errors: list[str] = []
    pg.on("pageerror", lambda exc: script_errors.append(str(exc)))
    yield pg
    context.close()
    assert not script_errors, f"JavaScript errors on the page: {script_errors}"


def upload(page, app_url: str, files: list[tuple[str, bytes]], body_part: str = "") -> None:
    page.goto(app_url + "/")
    mime = {"png": "image/png", "jpg": "image/jpeg", "dcm": "application/dicom"}
    page.set_input_files("#files", [
        {"name": name, "mimeType": mime.get(name.rsplit(".", 1)[-1], "application/octet-stream"),
         "buffer": data} for name, data in files])
    if body_part:
        page.select_option("#body-part", body_part)
    page.click("#score-button")
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=RESULT_TIMEOUT_MS)


def api_score(app_url: str, files: list[tuple[str, bytes]], body_part: str = "") -> dict:
    response = requests.post(f"{app_url}/api/score", timeout=120,
                             files=[("files", f) for f in files], data={"body_part": body_part})
    response.raise_for_status()
    return response.json()


def assert_no_traceback(page) -> None:
    text = page.inner_text("body")
    assert "Traceback" not in text and 'File "/' not in text


def test_upload_shows_probability_heatmap_and_study(page, web_app, web_artifacts):
    files = [("forearm_ap.png", encode(synthetic_radiograph(11))),
             ("forearm_lat.png", encode(synthetic_radiograph(12, 700, 520, bits=16)))]
    upload(page, web_app.url, files, body_part="forearm")
    expected = api_score(web_app.url, files, body_part="forearm")

    assert page.inner_text("#research-banner") == RESEARCH_USE_NOTICE
    cards = page.locator("article.image-card")
    assert cards.count() == len(files)
    for i, want in enumerate(expected["images"]):
        card = cards.nth(i)
        assert card.get_attribute("data-filename") == want["filename"]
        shown = card.locator(".summary .probability")
        assert float(shown.get_attribute("data-value")) == pytest.approx(want["probability"],
                                                                         abs=1e-6)
        assert shown.inner_text() == f"{want['probability']:.3f}"
        call = card.locator(".summary .call").get_attribute("data-call")
        assert call == ("abnormal" if want["abnormal"] else "normal")
        for member in MURA_MEMBERS:
            value = card.locator(f'tr[data-member="{member}"] .member-probability')
            assert float(value.get_attribute("data-value")) == pytest.approx(
                want["members"][member], abs=1e-6)
        # The heatmap is there, decoded, laid over the radiograph, and not blank.
        heat = card.locator("img.heatmap")
        assert heat.count() == 1
        stats = heat.evaluate(HEATMAP_STATS)
        assert (stats["width"], stats["height"]) == (320, 320)
        assert stats["distinct"] >= 16, stats
        assert heat.bounding_box() == card.locator("img.radiograph").bounding_box()
        for name, version in want["versions"].items():
            label = MURA_ENSEMBLE_MODEL if name == "pipeline" else name
            assert f"{label} v{version}" in card.locator(".versions").inner_text()

    study = page.locator("#study .study-probability")
    assert float(study.get_attribute("data-value")) == pytest.approx(
        expected["study"]["probability"], abs=1e-6)

    # The opacity slider drives every overlay; the scale switch swaps the colour-mapped view.
    page.locator("#opacity").fill("0.8")
    assert page.locator("img.heatmap").first.evaluate("e => e.style.opacity") == "0.8"
    page.select_option("#heat-scale", "absolute")
    first = page.locator("img.heatmap").first
    assert first.get_attribute("src") == first.get_attribute("data-absolute")
    page.select_option("#heat-scale", "relative")
    page.locator("#opacity").fill("0.45")
    assert_no_traceback(page)

    shot = web_artifacts / "results.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("MSK_UPDATE_DOCS_SCREENSHOT"):
        (REPO_ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, REPO_ROOT / "docs" / "img" / "web.png")


def test_corrupt_upload_shows_a_readable_error(page, web_app, web_artifacts):
    good = encode(synthetic_radiograph(13, 400, 320))
    upload(page, web_app.url, [("broken.png", good[: len(good) // 4]), ("ok.png", good)])
    error = page.locator('article[data-filename="broken.png"] .image-error')
    assert "broken.png" in error.inner_text() and "corrupt PNG" in error.inner_text()
    assert page.locator('article[data-filename="ok.png"] .summary .probability').count() == 1
    assert "1 of 2 images could not be scored" in page.inner_text("#message")
    assert_no_traceback(page)
    page.screenshot(path=str(web_artifacts / "corrupt-upload.png"), full_page=True)


def test_unsupported_format_shows_a_readable_error(page, web_app, web_artifacts):
    upload(page, web_app.url, [("scan.gif", b"GIF89a" + b"\x00" * 64)])
    assert "unsupported format (GIF)" in page.inner_text("#message")
    assert "unsupported format (GIF); expected PNG, JPEG" in page.inner_text("#message")
    assert_no_traceback(page)
    page.screenshot(path=str(web_artifacts / "unsupported-format.png"), full_page=True)


def test_server_down_shows_a_readable_error(page, web_app_server_down, web_artifacts):
    page.goto(web_app_server_down.url + "/")
    assert "is not reachable" in page.inner_text("#server-status")
    upload(page, web_app_server_down.url,
           [("forearm.png", encode(synthetic_radiograph(14, 300, 260)))])
    assert "is not reachable" in page.inner_text("#message")
    assert page.inner_text("#research-banner") == RESEARCH_USE_NOTICE
    assert_no_traceback(page)
    page.screenshot(path=str(web_artifacts / "server-down.png"), full_page=True)


@pytest.mark.parametrize("path", ["/models", "/no/such/page"])
def test_banner_on_every_page(page, web_app, path):
    page.goto(web_app.url + path)
    assert page.inner_text("#research-banner") == RESEARCH_USE_NOTICE
    assert page.locator("#server-status .model-version").count() >= 1
    assert_no_traceback(page)


def test_wrist_image_shows_labelled_boxes(page, web_app_wrist, wrist_upload, web_artifacts):
    files = [wrist_upload[:2]]
    upload(page, web_app_wrist.url, files, body_part="wrist")
    expected = api_score(web_app_wrist.url, files, body_part="wrist")["images"][0]
    assert expected["boxes"], "wrist_detect found no structure on the synthetic wrist"
    card = page.locator('article[data-filename="wrist_pa.png"]')
    boxes = card.locator("svg.boxes g.box")
    assert boxes.count() == len(expected["boxes"])
    labels = [boxes.nth(i).get_attribute("data-label") for i in range(boxes.count())]
    assert labels == [b["label"] for b in expected["boxes"]]
    assert set(labels) <= set(WRIST_CLASSES)
    for i in range(boxes.count()):
        assert boxes.nth(i).locator("text").text_content().startswith(labels[i])
        assert boxes.nth(i).locator("rect").bounding_box()["width"] > 2
    # The SVG is laid exactly over the radiograph, so original-pixel boxes land on the anatomy.
    assert card.locator("svg.boxes").bounding_box() == card.locator("img.radiograph").bounding_box()
    assert card.locator("img.heatmap").count() == 1
    assert_no_traceback(page)
    page.screenshot(path=str(web_artifacts / "wrist-boxes.png"), full_page=True)
    page.uncheck("#show-boxes")
    assert card.locator("svg.boxes").evaluate("e => getComputedStyle(e).display") == "none"
