"""The playground in a real headless browser (Debian's Chromium driven by Playwright): a prompt with a
trailing space typed in the box, generated, the text shown starting with the prompt, coloured by
surprisal with the top-5 guesses on hover; two checkpoints side by side; a text classified. It takes the
screenshots of docs/serve.md: ``CHARLM_SCREENSHOTS=docs/images`` writes them there (with
``CHARLM_SCREENSHOT_RUNS=<runs_dir>`` for trained models; see docs/serve.md), else to a temporary folder.

Needs Chromium (``apt-get install chromium``) and Playwright for Python (the test extra); never
``playwright install``, which downloads a browser of its own."""

import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette", reason='needs the serve extra: pip install -e ".[serve]" (or ".[test]")')
pytest.importorskip("playwright", reason='needs Playwright for Python: pip install -e ".[test]"')

from test_serve import ckpt, running, runs  # noqa: E402, F401  (runs: the fixture)

from charlm import serve  # noqa: E402

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None) or (
    shutil.which("chromium")
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium (Debian's package)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_the_page_in_a_browser(browser, runs, tmp_path):  # noqa: F811 (runs: test_serve.py's fixture)
    shots = Path(os.environ.get("CHARLM_SCREENSHOTS") or tmp_path)
    runs_dir = Path(os.environ.get("CHARLM_SCREENSHOT_RUNS") or runs)
    default = (
        serve.newest_checkpoint(runs_dir, topics=True)
        if "CHARLM_SCREENSHOT_RUNS" in os.environ
        else ckpt(runs, "topics")
    )
    models = serve.Models(Path(default), runs_dir, torch.device("cpu"))
    with running(serve.create_app(models)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#ckpt0 option').length > 0")
        page.wait_for_selector("#topic0:not([hidden])")
        # a prompt with a trailing space, typed as a person types it
        page.fill("#prompt", "")
        page.type("#prompt", "Today ")
        page.select_option("#topic0", "Sports")
        page.fill("#length", "240")
        page.fill("#seed", "1")
        page.click("#generate")
        page.wait_for_selector("#out0.done", timeout=60_000)
        assert page.inner_text("#error0") == "" and page.inner_text("#error") == ""
        text = page.eval_on_selector("#out0", "el => el.textContent")
        assert text.startswith("Today ") and len(text) == len("Today ") + 240
        assert "the same text: python sample.py" in page.inner_text("#info0")
        # coloured by surprisal; hovering a character shows the model's top-5 guesses
        spans = page.query_selector_all("#out0 span.c")
        assert len(spans) == len(text) and spans[20].evaluate("el => el.style.background") != ""
        spans[20].hover()
        page.wait_for_selector("#tip table")
        assert len(page.query_selector_all("#tip tr")) == 5
        page.screenshot(path=str(shots / "serve_page.png"))

        # bad input: a message on the page, and the page goes on working
        page.fill("#length", "100000")
        page.click("#generate")
        page.wait_for_function("document.getElementById('error0').textContent.includes('max_length=')")
        page.fill("#length", "160")

        # two checkpoints side by side, same prompt and seed
        page.mouse.move(5, 5)
        page.check("#compare")
        assert page.is_visible("#col1")
        page.click("#generate")
        page.wait_for_selector("#out0.done", timeout=60_000)
        page.wait_for_selector("#out1.done", timeout=60_000)
        assert page.inner_text("#error0") == "" and page.inner_text("#error1") == ""
        for out in ("#out0", "#out1"):
            assert page.eval_on_selector(out, "el => el.textContent").startswith("Today ")

        # classify a text with the topic model
        page.fill("#classify_text", "The Red Sox beat the Yankees 5-3 in the final game of the series.")
        page.click("#classify_button")
        page.wait_for_selector("#classify_out .prob")
        names = [el.inner_text() for el in page.query_selector_all("#classify_out .prob .name")]
        assert sorted(names) == sorted(models.get(None)[1].topics)
        page.screenshot(path=str(shots / "serve_compare.png"), full_page=True)
