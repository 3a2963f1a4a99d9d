"""The playground in a real headless browser (Debian's Chromium driven by Playwright): a prompt with a
trailing space typed in the box, generated, the text shown starting with the prompt, coloured by
surprisal with the top-5 guesses on hover; two checkpoints side by side; a text classified. It takes the
screenshots of docs/serve.md: ``CHARLM_SCREENSHOTS=docs/images`` writes them there (with
``CHARLM_SCREENSHOT_RUNS=<runs_dir>`` for trained models; see docs/serve.md), else to a temporary folder.

Needs Chromium (``apt-get install chromium``) and Playwright for Python (the test extra); never
``playwright install``, which downloads a browser of its own."""

import os
import re
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


COVERS_TEXT = """() => {
  const t = document.getElementById("tip").getBoundingClientRect();
  return [...document.querySelectorAll("#out0 span.c")].some(el => {
    const r = el.getBoundingClientRect();
    return r.left < t.right && r.right > t.left && r.top < t.bottom && r.bottom > t.top;
  });
}"""
LONG = "path-test.csv+topics-true+max_time-00_00_00_45_2026-12-07_06-43-19_17868"  # a run name as Hydra writes it


def test_the_page_in_a_browser(browser, runs, tmp_path, monkeypatch):  # noqa: F811 (runs: test_serve.py's fixture)
    shots = Path(os.environ.get("CHARLM_SCREENSHOTS") or tmp_path).resolve()
    if "CHARLM_SCREENSHOT_RUNS" in os.environ:
        runs_dir = Path(os.environ["CHARLM_SCREENSHOT_RUNS"]).resolve()
        default = serve.newest_checkpoint(runs_dir, topics=True)
    else:  # the test's runs under names as long as Hydra's
        runs_dir = tmp_path / "outputs"
        for name, long in (("tiny", "tiny+" + LONG), ("topics", LONG)):
            shutil.copytree(Path(ckpt(runs, name)).parent, runs_dir / "runs" / long / "checkpoints")
        default = runs_dir / "runs" / LONG / "checkpoints" / "best.ckpt"
    monkeypatch.chdir(runs_dir.parent)  # the page shows the paths as typed there: outputs/runs/...
    models = serve.Models(Path(default), runs_dir, torch.device("cpu"))
    app = serve.create_app(models, max_length=10**6)
    with running(app) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        not_found = []
        page.on("response", lambda response: response.status == 404 and not_found.append(response.url))
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#ckpt0 option').length > 0")
        page.wait_for_selector("#topic0:not([hidden])")
        # the picker's label: the short facts first, the long run name last
        label = page.eval_on_selector("#ckpt0", "el => el.options[el.selectedIndex].text")
        assert re.match(r"(lstm|gru|rnn) \d+\u00d7\d+, topics, (no test|test \d\.\d{3} bpc) \u2014 ", label), label
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
        assert "the same text: python sample.py ckpt=outputs/runs/" in page.inner_text("#info0")
        # coloured by surprisal; hovering a character shows the model's top-5 guesses, in a tooltip that
        # covers none of the text (for the screenshot): the end of a line above a shorter one, else a
        # character of the last line
        spans = page.query_selector_all("#out0 span.c")
        assert len(spans) == len(text) and spans[20].evaluate("el => el.style.background") != ""
        lines = {}
        for span in spans:
            box = span.bounding_box()
            if box and box["width"] > 0:  # not a line break's empty box
                lines.setdefault(box["y"], []).append(span)
        rows = [lines[y] for y in sorted(lines)]
        for span in [row[-1] for row in reversed(rows[:-1])] + [rows[-1][len(rows[-1]) // 2]]:
            span.hover()
            page.wait_for_selector("#tip table")
            if not page.evaluate(COVERS_TEXT):
                break
        assert len(page.query_selector_all("#tip tr")) == 5 and not page.evaluate(COVERS_TEXT)
        page.screenshot(path=str(shots / "serve_page.png"))

        # bad input: a message on the page, and the page goes on working
        page.fill("#length", "2000000")
        page.click("#generate")
        page.wait_for_function("document.getElementById('error0').textContent.includes('max_length=')")

        # Ctrl+Enter while generating starts nothing: Stop stops the one generation
        streams = app.state.streams
        before = len(streams["finished"])
        page.fill("#length", "1000000")
        page.click("#generate")
        page.wait_for_function("document.getElementById('out0').textContent.length > 6")
        page.press("#prompt", "Control+Enter")
        page.click("#stop")
        page.wait_for_selector("#generate:not([disabled])", timeout=20_000)
        page.wait_for_selector("#out0.done", timeout=60_000)
        assert [end["end"] for end in list(streams["finished"])[before:]] == ["stopped"] and streams["active"] == 0
        assert page.inner_text("#info0").startswith("mean ") and "stopped: " in page.inner_text("#info0")
        page.fill("#length", "160")

        # two checkpoints side by side, same prompt and seed, their texts level
        page.mouse.move(5, 5)
        page.check("#compare")
        assert page.is_visible("#col1")
        page.click("#generate")
        page.wait_for_selector("#out0.done", timeout=60_000)
        page.wait_for_selector("#out1.done", timeout=60_000)
        assert page.inner_text("#error0") == "" and page.inner_text("#error1") == ""
        for out in ("#out0", "#out1"):
            assert page.eval_on_selector(out, "el => el.textContent").startswith("Today ")
        assert page.query_selector("#out0").bounding_box()["y"] == page.query_selector("#out1").bounding_box()["y"]

        # classify a text with the topic model
        page.fill("#classify_text", "The Red Sox beat the Yankees 5-3 in the final game of the series.")
        page.click("#classify_button")
        page.wait_for_selector("#classify_out .prob")
        names = [el.inner_text() for el in page.query_selector_all("#classify_out .prob .name")]
        assert sorted(names) == sorted(models.get(None)[1].topics)
        page.screenshot(path=str(shots / "serve_compare.png"), full_page=True)
        assert not_found == []  # the favicon included
