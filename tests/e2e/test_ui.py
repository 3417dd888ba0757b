"""The attention explorer (/ui) in real headless Chromium against a real `mhaserve serve` process.

Playwright drives the system's Chromium (Debian package `chromium`, `make system-deps`);
the tests skip only when that browser is missing. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SENTENCE = "The cat sat on the mat because it was tired."
API_KEY = "ui-test-key"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed: `make system-deps` (as root) installs Debian's chromium"
)


class BrowserLog:
    """Console errors and uncaught exceptions of one page."""

    def __init__(self, page: Page):
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def errors_besides_http_status(self, status: int) -> list[str]:
        """Chromium logs every non-2xx fetch as a console error; an expected one is not a fault."""
        expected = f"the server responded with a status of {status}"
        return [error for error in self.errors if expected not in error]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def open_explorer(page: Page, url: str) -> BrowserLog:
    log = BrowserLog(page)
    page.goto(url + "/ui")
    page.wait_for_function("document.getElementById('model-info').textContent.length > 0")
    return log


def open_explorer_expecting_error(page: Page, url: str) -> BrowserLog:
    log = BrowserLog(page)
    page.goto(url + "/ui")
    page.locator("#model-error").wait_for(state="visible")
    return log


def show_attention(page: Page, text: str) -> None:
    page.fill("#sentence", text)
    page.get_by_role("button", name="Show attention").click()


def word_pieces(url: str, text: str, headers: dict | None = None) -> list[dict]:
    answer = httpx.post(url + "/v1/tokenize", json={"inputs": [text]}, headers=headers, timeout=30)
    answer.raise_for_status()
    return answer.json()["tokens"][0]


def test_page_loads_without_console_errors_and_names_the_model(page, server):
    log = open_explorer(page, server.url)
    card = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]
    info = page.text_content("#model-info")
    assert card["name"] in info
    assert f"{card['layers']} layers \u00d7 {card['heads']} heads" in info
    assert page.locator("#layer option").count() == card["layers"]
    assert page.locator("#head option").count() == card["heads"]
    assert log.errors == []


def test_a_sentence_draws_one_heatmap_cell_per_pair_of_its_word_pieces(page, server):
    log = open_explorer(page, server.url)
    pieces = word_pieces(server.url, SENTENCE)
    n = len(pieces)
    show_attention(page, SENTENCE)
    page.wait_for_function(f"document.querySelectorAll('#heatmap .attn-cell').length === {n * n}")

    assert page.locator("#heatmap").get_attribute("data-cell-count") == str(n * n)
    assert page.locator("#word-pieces li").all_text_contents() == [piece["text"] for piece in pieces]
    assert page.locator("#token-view .t2t-from").count() == n
    card = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]
    assert page.locator("#overview button.multiple").count() == card["layers"] * card["heads"]
    assert page.locator("#legend .legend-bar").is_visible()
    assert log.errors == []

    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "ui-explorer.png"), full_page=True)


def test_hovering_a_word_piece_names_what_it_attends_to_most(page, server):
    layer, head, attending = 2, 5, 7  # "because"
    answer = httpx.post(
        server.url + "/v1/embed",
        json={"inputs": [SENTENCE], "return_tokens": True, "return_attention": {"layers": [layer], "heads": [head]}},
        timeout=30,
    ).json()
    weights = np.array(answer["attention"][0]["data"])[0, 0, attending]
    strongest = answer["tokens"][0][int(weights.argmax())]["text"]

    log = open_explorer(page, server.url)
    show_attention(page, SENTENCE)
    page.wait_for_selector("#heatmap .attn-cell")
    page.select_option("#layer", str(layer))
    page.select_option("#head", str(head))
    page.hover(f"#token-view .t2t-from[data-index='{attending}']")

    readout = page.text_content("#token-readout")
    assert readout.startswith(f"\u201cbecause\u201d (#{attending}) attends most to \u201c{strongest}\u201d")
    assert f"{weights.max():.2f}" in readout
    assert page.locator("#token-view .t2t-lines line").count() == len(answer["tokens"][0])
    assert page.get_attribute("#heatmap .heatmap-row", "visibility") == "visible"
    assert log.errors == []


def test_choosing_a_small_multiple_selects_its_layer_and_head(page, server):
    log = open_explorer(page, server.url)
    show_attention(page, SENTENCE)
    choice = page.get_by_role("button", name="Layer 3, head 7")
    choice.click()
    assert page.text_content("#heatmap-title") == "Layer 3, head 7"
    assert page.input_value("#layer") == "3"
    assert page.input_value("#head") == "7"
    assert choice.get_attribute("aria-pressed") == "true"
    choice.press("ArrowDown")
    page.keyboard.press("Enter")
    assert page.text_content("#heatmap-title") == "Layer 4, head 7"
    assert log.errors == []


def test_a_text_over_the_model_limit_is_explained_in_plain_words(page, server):
    max_len = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["max_len"]
    log = open_explorer(page, server.url)
    show_attention(page, "word " * (max_len + 10))
    error = page.locator("#explore-error")
    error.wait_for(state="visible")
    assert "This text is too long" in error.text_content()
    assert f"at most {max_len} word pieces" in error.text_content()
    assert page.locator("#heatmap .attn-cell").count() == 0
    assert log.errors_besides_http_status(422) == []


def test_a_text_too_large_for_every_head_at_once_is_shown_one_head_at_a_time(page, start_server):
    server = start_server("--max-attention-values", "1000")  # one head of SENTENCE fits, all 72 don't
    n = len(word_pieces(server.url, SENTENCE))
    assert n * n <= 1000 < 72 * n * n
    log = open_explorer(page, server.url)
    show_attention(page, SENTENCE)
    page.wait_for_function(f"document.querySelectorAll('#heatmap .attn-cell').length === {n * n}")
    assert "too long for the server to send every head at once" in page.text_content("#overview-note")
    assert page.locator("#overview button.multiple").count() == 0

    page.select_option("#head", "4")
    page.wait_for_function("document.getElementById('heatmap-title').textContent === 'Layer 0, head 4'")
    assert page.locator("#heatmap .attn-cell").count() == n * n
    assert page.locator("#explore-error").is_hidden()
    assert log.errors_besides_http_status(413) == []


@pytest.mark.parametrize(
    ("status", "error_type", "headers", "plain_words"),
    [
        (429, "overloaded", {"Retry-After": "3"}, "The server is busy right now. Please try again in 3 seconds."),
        (503, "not_ready", {}, "The server is not ready (it is starting up or shutting down)."),
        (504, "deadline_exceeded", {}, "The server took too long to answer."),
    ],
)
def test_statuses_that_cannot_be_provoked_on_demand_are_explained(
    page, server, status, error_type, headers, plain_words
):
    """A full queue or a draining server can't be had on cue, so the browser answers /v1/embed
    itself here, with the real server's error body; the page must still say what to do."""
    body = json.dumps({"error": {"type": error_type, "message": "see the status"}})
    page.route(
        "**/v1/embed",
        lambda route: route.fulfill(status=status, headers=headers, content_type="application/json", body=body),
    )
    log = open_explorer(page, server.url)
    show_attention(page, SENTENCE)
    error = page.locator("#explore-error")
    error.wait_for(state="visible")
    assert plain_words in error.text_content()
    assert page.get_by_role("button", name="Show attention").is_enabled()
    assert log.errors_besides_http_status(status) == []


def test_a_missing_api_key_is_explained_and_the_key_field_fixes_it(page, start_server):
    server = start_server(env={"MHASERVE_API_KEYS": API_KEY})
    log = open_explorer_expecting_error(page, server.url)
    assert "needs an API key" in page.text_content("#model-error")

    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.wait_for_function("document.getElementById('model-info').textContent.length > 0")
    assert page.locator("#model-error").is_hidden()
    n = len(word_pieces(server.url, SENTENCE, headers={"Authorization": f"Bearer {API_KEY}"}))
    show_attention(page, SENTENCE)
    page.wait_for_function(f"document.querySelectorAll('#heatmap .attn-cell').length === {n * n}")
    assert log.errors_besides_http_status(401) == []


def test_compared_sentences_show_the_cosine_similarity_of_their_embeddings(page, server):
    sentences = ["A man is playing a guitar.", "Someone plays music on a guitar.", "Shares fell sharply today."]
    embeddings = np.array(
        httpx.post(server.url + "/v1/embed", json={"inputs": sentences}, timeout=30).json()["embeddings"]
    )
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected = unit @ unit.T

    log = open_explorer(page, server.url)
    page.fill("#compare-input", "\n".join(sentences))
    page.get_by_role("button", name="Compare").click()
    page.wait_for_selector(".similarity")
    shown = [float(text) for text in page.locator(".similarity-cell").all_text_contents()]
    assert np.allclose(np.array(shown).reshape(3, 3), expected, atol=0.006)
    i, j = max(((i, j) for i in range(3) for j in range(i + 1, 3)), key=lambda pair: expected[pair])
    assert page.text_content(".compare-summary") == f"Most similar pair: S{i + 1} and S{j + 1} ({expected[i, j]:.2f})."
    assert log.errors == []


def rest_attention(url: str, text: str, attention: dict) -> np.ndarray:
    answer = httpx.post(url + "/v1/embed", json={"inputs": [text], "return_attention": attention}, timeout=30)
    answer.raise_for_status()
    return np.array(answer.json()["attention"][0]["data"])


def attention_requests(page: Page) -> list[dict]:
    """The return_attention of every /v1/embed request the page sends."""
    sent: list[dict] = []

    def record(request) -> None:
        if request.url.endswith("/v1/embed") and request.post_data:
            sent.append(json.loads(request.post_data).get("return_attention"))

    page.on("request", record)
    return sent


def test_token_importance_is_the_servers_rollout_cls_row_and_reads_by_keyboard(page, server):
    pieces = word_pieces(server.url, SENTENCE)
    n = len(pieces)
    cls_row = rest_attention(server.url, SENTENCE, {"rollout": True, "rows": [0]})[0, 0, 0]
    log = open_explorer(page, server.url)
    sent = attention_requests(page)
    show_attention(page, SENTENCE)
    page.wait_for_function(f"document.querySelectorAll('#importance-strip li').length === {n}")

    strip = page.locator("#importance-strip li")
    assert strip.all_text_contents() == [piece["text"] for piece in pieces]
    shown = [float(value) for value in strip.evaluate_all("items => items.map(i => i.dataset.value)")]
    np.testing.assert_allclose(shown, cls_row, atol=1e-5)
    assert {"rollout": True, "rows": [0]} in sent and {"reduce_heads": "mean"} in sent

    page.focus("#importance-strip")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    readout = page.text_content("#importance-readout")
    assert readout.startswith(f"\u201c{pieces[1]['text']}\u201d (#1): {cls_row[1]:.3f}")
    rank = int((cls_row > cls_row[1]).sum()) + 1
    assert f" {rank}" in readout and f"of {n} by what [CLS] draws from" in readout
    assert "Attention is not explanation" in page.text_content(".caveat")

    page.select_option("#importance-source", "received")
    means = rest_attention(server.url, SENTENCE, {"reduce_heads": "mean"})  # (6, 1, n, n)
    shown = [float(value) for value in strip.evaluate_all("items => items.map(i => i.dataset.value)")]
    np.testing.assert_allclose(shown, means.mean(axis=(0, 1, 2)), atol=1e-5)
    assert log.errors == []


def test_the_rollout_view_shows_the_servers_rollout_and_is_kept_as_a_screenshot(page, server):
    n = len(word_pieces(server.url, SENTENCE))
    log = open_explorer(page, server.url)
    sent = attention_requests(page)
    show_attention(page, SENTENCE)
    page.wait_for_function(f"document.querySelectorAll('#importance-strip li').length === {n}")
    page.focus("#view-mode")
    page.select_option("#view-mode", "rollout")
    assert page.text_content("#heatmap-title") == "Rollout through layers 0\u20135"
    assert page.locator("#heatmap .attn-cell").count() == n * n
    assert page.is_disabled("#head") and page.is_disabled("#layer")
    assert {"rollout": True} in sent

    rollout = rest_attention(server.url, SENTENCE, {"rollout": True})[0, 0]
    page.focus("#heatmap")
    page.keyboard.press("ArrowDown")  # the cursor starts at [CLS], [CLS]
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    assert f"with weight {rollout[1, 1]:.3f}" in page.text_content("#heatmap-readout")
    assert log.errors == []

    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "ui-rollout.png"), full_page=True)


def test_the_head_mean_per_layer_is_chosen_by_keyboard(page, server):
    means = rest_attention(server.url, SENTENCE, {"reduce_heads": "mean"})
    log = open_explorer(page, server.url)
    show_attention(page, SENTENCE)
    buttons = page.locator("#layer-means button.multiple")
    buttons.first.wait_for()
    assert buttons.count() == 6
    first = page.get_by_role("button", name="Layer 0, mean of all heads")
    first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    assert page.text_content("#heatmap-title") == "Layer 2, mean of 12 heads"
    assert page.input_value("#view-mode") == "mean"
    assert page.get_by_role("button", name="Layer 2, mean of all heads").get_attribute("aria-pressed") == "true"
    page.hover("#token-view .t2t-from[data-index='3']")
    strongest = int(means[2, 0, 3].argmax())
    assert f"attends most to \u201c{word_pieces(server.url, SENTENCE)[strongest]['text']}\u201d" in page.text_content(
        "#token-readout"
    )
    page.select_option("#layer", "4")
    assert page.text_content("#heatmap-title") == "Layer 4, mean of 12 heads"
    assert log.errors == []


def test_what_is_shown_downloads_as_png_and_as_the_json_answer(page, server, tmp_path):
    n = len(word_pieces(server.url, SENTENCE))
    log = open_explorer(page, server.url)
    show_attention(page, SENTENCE)
    page.wait_for_function(f"document.querySelectorAll('#importance-strip li').length === {n}")
    page.select_option("#view-mode", "rollout")

    with page.expect_download() as download:
        page.get_by_role("button", name="Download PNG").click()
    assert download.value.suggested_filename == "attention-rollout.png"
    picture = Path(download.value.path()).read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 1000

    with page.expect_download() as download:
        page.get_by_role("button", name="Download JSON").click()
    assert download.value.suggested_filename == "attention-rollout.json"
    answer = json.loads(Path(download.value.path()).read_text())
    entry = answer["attention"][0]
    assert entry["shape"] == [1, 1, n, n] and entry["rollout"] is True and entry["layers"] == list(range(6))

    page.select_option("#view-mode", "head")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download JSON").click()
    assert download.value.suggested_filename == "attention-layer0-head0.json"
    assert json.loads(Path(download.value.path()).read_text())["attention"][0]["shape"] == [6, 12, n, n]
    assert log.errors == []
