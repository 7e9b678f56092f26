"""The playground page (`GET /`) in a real browser: headless Chromium from Debian's
`chromium` package, driven by Playwright, against a real `rnnlm serve` whose API key
option is on. A screenshot is kept in test-artifacts/ (not in git)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.live import live_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("RNNLM_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(
    os.environ.get("RNNLM_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
KEY = "playground-key"
ENDLESS_TOKENS = 100_000_000  # hours of sampling at any speed
AUTH = {"Authorization": f"Bearer {KEY}"}


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"no browser at {CHROMIUM} (install Debian's package: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    why = _missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test cannot run in CI: {why}")
        pytest.skip(why)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(served_models: Path) -> Iterator[str]:
    # Long enough that no machine finishes the endless sample below before Stop: on one
    # busy core the page fell so far behind the stream that the server had sent all of
    # 100,000 tokens by the time Escape was pressed.
    env = {"RNNLM_API_KEY": KEY, "RNNLM_MAX_TOKENS": str(ENDLESS_TOKENS)}
    with live_server(served_models, env) as live:
        yield live.base


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """The page as a user opens it: no key typed yet. Fails on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    p = context.new_page()
    script_errors: list[str] = []
    p.on("pageerror", lambda e: script_errors.append(str(e)))
    p.goto(server + "/")
    yield p
    context.close()
    assert script_errors == []


def use_key(page: Page, key: str = KEY) -> None:
    from playwright.sync_api import expect

    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")
    if key == KEY:
        expect(page.locator("#model option")).to_have_count(3)
        expect(page.locator("#model-error")).to_be_hidden()


def api(server: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(server + path, json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def test_page_opens_without_a_key_and_says_what_to_do(page: Page) -> None:
    from playwright.sync_api import expect

    error = page.locator("#model-error")
    expect(error).to_contain_text("Error 401: missing or wrong API key")
    expect(error).to_contain_text("API key field")
    use_key(page, "not-the-key")
    expect(error).to_contain_text("Error 401")
    use_key(page)
    options = page.locator("#model option").all_text_contents()
    assert options == ["char", "endless", "word"]
    expect(page.get_by_label("Model", exact=True)).to_have_value("char")  # the server's default
    expect(page.locator("#model-info")).to_contain_text("LSTM, 2 × 32 units · char tokens")


def test_sample_streams_as_it_generates(page: Page, server: str) -> None:
    from playwright.sync_api import expect

    use_key(page)
    text, stop = page.locator("#sample-text"), page.get_by_role("button", name="Stop")
    # A model that never ends its text, asked for 100M tokens: the text must grow on the
    # page while the request is still running, and Stop (here: Escape) ends it.
    page.get_by_label("Model", exact=True).select_option("endless")
    page.get_by_label("Max tokens").fill(str(ENDLESS_TOKENS))
    page.get_by_role("button", name="Sample").click()
    expect(stop).to_be_enabled()
    # (Polled from here: the page's Content-Security-Policy forbids Playwright's in-page eval.)
    expect(text).to_have_text(re.compile(r"[\s\S]{20}"))
    seen = len(text.text_content() or "")
    expect(text).to_have_text(re.compile(r"[\s\S]{" + str(seen + 100) + "}"))
    expect(stop).to_be_enabled()  # still streaming
    page.keyboard.press("Escape")
    expect(page.locator("#sample-info")).to_contain_text("Stopped after")
    expect(stop).to_be_disabled()
    assert len(text.text_content() or "") > seen + 100

    # A sample that runs to its end equals the same request answered without streaming.
    page.get_by_label("Model", exact=True).select_option("char")
    page.get_by_label("Temperature").fill("0.9")
    page.get_by_label("Top-k").fill("20")
    page.get_by_label("Top-p").fill("0.95")
    page.get_by_label("Max tokens").fill("60")
    page.get_by_label("Seed").fill("7")
    page.get_by_label("Prompt").fill("the ")
    page.get_by_label("Prompt").press("Control+Enter")
    info = page.locator("#sample-info")
    expect(info).to_contain_text("Done:")
    req = {"model": "char", "prompt": "the ", "temperature": 0.9, "top_k": 20, "top_p": 0.95,
           "max_tokens": 60, "seed": 7}  # fmt: skip
    want = api(server, "/sample", req)["samples"][0]
    assert text.text_content() == want["text"]
    assert page.locator("#sample-prompt").text_content() == "the "
    expect(info).to_contain_text(f"{want['num_tokens']} tokens")
    expect(info).to_contain_text(f"log-prob {want['logprob']:.2f}")
    expect(info).to_contain_text("seed 7")


def test_score_shows_logprob_perplexity_and_shaded_tokens(page: Page, server: str) -> None:
    from playwright.sync_api import expect

    use_key(page)
    page.get_by_label("Seed").fill("3")
    page.get_by_role("button", name="Sample").click()
    expect(page.locator("#sample-info")).to_contain_text("Done:")

    sentences = ["the cat sat on the mat.", "zzq"]  # z and q are not in the char vocabulary
    page.get_by_label("Sentences, one per line").fill(sentences[0] + "\n\n" + sentences[1])
    page.get_by_role("button", name="Score").click()
    rows = page.locator("#score-rows tr.score-row")
    expect(rows).to_have_count(2)
    want = api(server, "/score", {"model": "char", "texts": sentences, "per_token": True})
    colours: set[str] = set()
    for row, r in zip(rows.all(), want["results"], strict=True):
        # Two decimals as shown; the page's request and this one may round apart in the last bit.
        assert float(row.locator("td.logprob").text_content() or "nan") == pytest.approx(
            r["logprob"], abs=0.0051
        )
        assert float(row.locator("td.perplexity").text_content() or "nan") == pytest.approx(
            r["perplexity"], abs=0.0051
        )
        assert row.locator("td.num-tokens").text_content() == str(r["num_tokens"])
        tokens = row.locator(".tokens > .tok")
        expect(tokens).to_have_count(r["num_tokens"])  # <eos> included
        shown = [float(p) for p in tokens.evaluate_all("ts => ts.map(t => t.dataset.p)")]
        assert shown == pytest.approx([math.exp(t["logprob"]) for t in r["tokens"]], rel=1e-5)
        shades = tokens.evaluate_all("ts => ts.map(t => getComputedStyle(t).backgroundColor)")
        for colour, p in zip(shades, shown, strict=True):
            # The darker, the less likely: alpha grows with -log10(p), darkest from 1e-4.
            alpha = 0.06 + 0.74 * min(1.0, -math.log10(p) / 4)
            assert colour.startswith("rgba(234, 88, 12, ")
            assert float(colour.rstrip(")").split(", ")[3]) == pytest.approx(alpha, abs=0.005)
        colours.update(shades)
    assert len(colours) > 1
    expect(rows.nth(1).locator(".tok.unk")).to_have_count(3)
    assert rows.nth(1).locator("td.oov").text_content() == "3"

    # A word model's tokens are words, shown with spaces between them.
    page.get_by_label("Model", exact=True).select_option("word")
    page.get_by_label("Sentences, one per line").fill("the cat sat.")
    page.get_by_label("Sentences, one per line").press("Control+Enter")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".tokens").first).to_have_text("the cat sat . ⏎")
    page.get_by_label("Model", exact=True).select_option("char")
    page.get_by_label("Sentences, one per line").fill("\n".join(sentences))
    page.get_by_role("button", name="Score").click()
    expect(rows).to_have_count(2)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000


def test_api_errors_are_shown_as_readable_messages(page: Page) -> None:
    from playwright.sync_api import expect

    use_key(page)
    temperature = page.get_by_label("Temperature")
    temperature.fill("1000")
    page.get_by_role("button", name="Sample").click()
    error = page.locator("#sample-error")
    expect(error).to_have_text("Error 422: temperature: Input should be less than or equal to 100")
    expect(temperature).to_have_attribute("aria-invalid", "true")
    temperature.fill("1")
    page.get_by_label("Seed").fill("-1")
    page.get_by_role("button", name="Sample").click()
    expect(error).to_contain_text("Error 422: seed: Input should be greater than or equal to 0")
    expect(temperature).not_to_have_attribute("aria-invalid", "true")
    page.get_by_label("Seed").fill("")
    page.get_by_role("button", name="Sample").click()
    expect(page.locator("#sample-info")).to_contain_text("Done:")
    expect(error).to_be_hidden()

    # A key that stops working (changed on the server, mistyped): the next call says so.
    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Score").click()
    expect(page.locator("#score-error")).to_contain_text("Error 401: missing or wrong API key")
