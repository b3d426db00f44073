"""The web page in headless Chromium against the real gunicorn.

Set WEB_SCREENSHOT=docs/web.png to write the screenshot of the page with a drawn bird (the committed one was
made this way; regenerate it with the default model: `WEB_BUNDLE=models/default`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=FLAGS, headless=True)
        yield b
        b.close()


def test_web_page_draws_a_bird_with_attention_maps(browser, start_server):
    bundle = os.environ.get("WEB_BUNDLE")  # e.g. models/default for the committed screenshot
    s = start_server(**({"BUNDLE_DIR": bundle} if bundle else {}))
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(s.url + "/", timeout=30000)
    assert "Draw a bird" in page.text_content("h1")
    examples = page.locator("button.example")
    assert examples.count() >= 3
    examples.first.click()  # fills the caption box and draws
    page.wait_for_selector("#result:not([hidden])", timeout=60000)
    for name, size in (("small", 64), ("medium", 128), ("large", 256)):
        page.wait_for_function(f"document.getElementById('img-{name}').complete")
        assert page.evaluate(f"document.getElementById('img-{name}').naturalWidth") == size
    page.wait_for_function("document.getElementById('img-map2').complete "
                           "&& document.getElementById('img-map2').naturalWidth > 256")
    tokens = page.locator(".words .token").all_text_contents()
    assert tokens[:3] == ["the", "bird", "has"]
    assert "seed 100" in page.text_content("#status") and "truncation" not in page.text_content("#status")
    if os.environ.get("WEB_SCREENSHOT"):  # a palette PNG, as the other committed pictures (~3x smaller)
        import io

        from PIL import Image

        from attngan.render import save_palette_png

        save_palette_png(Image.open(io.BytesIO(page.screenshot(full_page=True))), os.environ["WEB_SCREENSHOT"])

    # less variety: the request carries the chosen truncation and the status says which
    large = page.get_attribute("#img-large", "src")
    page.select_option("#truncation", "0.5")
    page.click("#generate")
    page.wait_for_function(f"document.getElementById('img-large').getAttribute('src') !== {large!r}", timeout=60000)
    assert "truncation 0.5" in page.text_content("#status")

    # errors are shown plainly, not as a broken page
    page.fill("#caption", "xyzzy plugh")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])", timeout=30000)
    assert "vocabulary" in page.text_content("#error")
    page.close()
