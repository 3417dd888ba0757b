"""The attention explorer's rerank view in real headless Chromium, against real servers: a query
and documents ranked by a reranker, and a chosen document's query x document attention and what
[CLS] drew on. The fake reranker's scores are a documented function of the pair, so the ranking
is checked exactly; the screenshot in docs/ is of all-MiniLM-L6-v2's graph as a reranker."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from bench.rerank import reranker
from tests.e2e.test_ui import CHROMIUM, SCREENSHOTS, browser, open_explorer, page  # noqa: F401
from tests.support.server import ARTIFACT, launch

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed: `make system-deps` (as root) installs Debian's chromium"
)
QUERY = "the man is playing guitar"
DOCUMENTS = ["a dog", "the man is playing", "a man is playing guitar", "the fox"]


@pytest.fixture(scope="module")
def fake():
    process = launch("--fake-task", "embed,rerank", model_dir=None)
    yield process
    process.stop()


def rank(tab, documents: list[str]) -> None:
    tab.fill("#rerank-query", QUERY)
    tab.fill("#rerank-documents", "\n".join(documents))
    tab.get_by_role("button", name="Rank").click()
    tab.locator("#rerank-detail").wait_for(state="visible")


def test_the_rerank_view_ranks_documents_and_shows_the_chosen_pairs_block(page, fake):  # noqa: F811
    log = open_explorer(page, fake.url)
    assert page.locator("#rerank-model option").all_text_contents() == ["fake-rerank"]
    rank(page, DOCUMENTS)
    answer = httpx.post(
        fake.url + "/rerank", json={"model": "fake-rerank", "query": QUERY, "texts": DOCUMENTS}, timeout=30
    ).json()
    shown = page.locator("#rerank-results button.ranked")
    assert [int(b) for b in (shown.nth(i).get_attribute("data-index") for i in range(4))] == [
        a["index"] for a in answer
    ]
    assert shown.nth(0).get_attribute("aria-pressed") == "true"
    assert f"{answer[0]['score']:.3f}" in shown.nth(0).text_content()

    # the best document's block: query rows x document columns, one cell each
    best = DOCUMENTS[answer[0]["index"]]
    cells = len(QUERY.split()) * len(best.split())
    page.wait_for_function(f"document.querySelectorAll('#rerank-heatmap .attn-cell').length === {cells}")
    assert page.locator("#rerank-query-tokens li").all_text_contents() == QUERY.split()
    assert page.locator("#rerank-document-tokens li").all_text_contents() == best.split()

    # choose another document and a head: the block follows, and equals the server's
    other = answer[-1]["index"]
    page.select_option("#rerank-view", "head")
    page.select_option("#rerank-layer", "0")
    page.select_option("#rerank-head", "1")
    page.locator(f"#rerank-results button.ranked[data-index='{other}']").click()
    cells = len(QUERY.split()) * len(DOCUMENTS[other].split())
    page.wait_for_function(f"document.querySelectorAll('#rerank-heatmap .attn-cell').length === {cells}")
    assert page.locator(f"#rerank-results button.ranked[data-index='{other}']").get_attribute("aria-pressed") == "true"
    page.locator("#rerank-heatmap .attn-cell").first.hover()
    served = httpx.post(
        fake.url + "/rerank",
        json={
            "model": "fake-rerank",
            "query": QUERY,
            "texts": [DOCUMENTS[other]],
            "return_attention": {"layers": [0], "heads": [1], "block": "query_to_document"},
        },
        timeout=30,
    ).json()[0]["attention"]["data"]
    readout = page.text_content("#rerank-readout")
    assert f"{np.array(served)[0, 0, 0, 0]:.4f}" in readout, readout
    assert log.errors == []


def test_the_rerank_view_of_a_real_reranker_is_kept_as_a_screenshot(page, tmp_path):  # noqa: F811
    server = launch("--model-dir", str(reranker()), model_dir=ARTIFACT)
    try:
        log = open_explorer(page, server.url)
        documents = [
            "Someone is playing music on a guitar.",
            "A man is playing a flute.",
            "The stock market fell sharply today.",
            "A man plays an acoustic guitar on stage.",
        ]
        page.fill("#rerank-query", "A man is playing a guitar.")
        page.fill("#rerank-documents", "\n".join(documents))
        page.get_by_role("button", name="Rank").click()
        page.locator("#rerank-detail").wait_for(state="visible")
        page.wait_for_function("document.querySelectorAll('#rerank-heatmap .attn-cell').length > 0")
        page.wait_for_function("document.querySelectorAll('#rerank-document-tokens li').length > 0")
        assert page.locator("#rerank-results button.ranked").count() == 4
        assert log.errors == []
        SCREENSHOTS.mkdir(exist_ok=True)
        page.locator("#rerank-section").screenshot(path=str(SCREENSHOTS / "ui-rerank.png"))
    finally:
        server.stop()
