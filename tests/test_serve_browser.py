"""The analysts' page in a real headless browser (Debian's chromium, driven by Playwright): paste the seed article, tag
it, and check the sentences, chips and summary on the page against the API's answer; screenshots are saved as test
artefacts (the pytest tmp folder and, when set, $COOPSTANCE_ARTIFACTS).

Skipped when Playwright or chromium is missing: `make install` installs both (chromium with apt, as root)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from serve_server import running_server

SEED = REPO / "seeds" / "trade_ministers_us_japan_korea.de.txt"
JA = ("日米韓の経済閣僚が初会合\n日米韓の経済閣僚は水曜日、ワシントンで初めて会合を開いた。"
      "半導体や重要鉱物のサプライチェーン強化で協力することで一致した。「中国への依存を減らす」と述べた。")
KO = ("한미일 산업장관 첫 회의\n한미일 산업장관들이 수요일 워싱턴에서 처음으로 만났다. "
      "세 나라는 반도체와 배터리 공급망 협력을 강화하기로 했다. 중국은 이에 반발했다.")
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).is_file()), None)

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="Playwright is not installed (pip install playwright; `make install` does it)"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: install Debian's package (apt-get install chromium; `make install` does it as root)"),
]


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    cfg, _ = trained_run
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(cfg.run_dir / "model", log, "--max-chars-per-article", "5000", "--threads", "1") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    # Playwright's own browser download is never used: the system chromium is launched by path.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.startsWith('model ')")
    yield page
    context.close()
    assert not errors, errors


def save_artefact(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("COOPSTANCE_ARTIFACTS"):
        folder = Path(os.environ["COOPSTANCE_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return path


def api_answer(server, text, article_id):
    response = httpx.post(server.url + "/v1/tag", json={"article": text, "id": article_id}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["articles"][0]


def tag_on_page(page, text):
    page.fill("#text", text)
    page.click("#tag")
    page.wait_for_selector("#status:has-text('Tagged')")


def check_page_against(page, answer):
    """Every sentence in place with its stance and chips, and the summary, as the API answered."""
    shown = page.eval_on_selector_all(".sentence", """nodes => nodes.map(n => ({
        index: Number(n.dataset.index), stance: n.dataset.stance, text: n.querySelector('.sentence-text').textContent,
        topics: [...n.querySelectorAll('.chip')].map(c => c.dataset.topic), chips: [...n.querySelectorAll('.chip')].map(c => c.textContent)}))""")
    rows = answer["sentences"]
    assert len(shown) == len(rows) == answer["summary"]["n_sentences"]
    for on_page, row in zip(shown, rows):
        assert on_page["index"] == row["sentence_index"] and on_page["text"] == row["text"] and on_page["stance"] == row["stance"]
        assert on_page["topics"] == row["topics"] and on_page["chips"] == [t.replace("_", " ") for t in row["topics"]]
    summary = answer["summary"]
    shares = page.eval_on_selector_all(".share", "nodes => nodes.map(n => [n.dataset.topic, n.querySelector('.pct').textContent])")
    expected = sorted(((t, s) for t, s in summary["topic_shares"].items() if s > 0), key=lambda item: -item[1])
    assert [t for t, _ in shares] == [t for t, _ in expected]
    for (_, pct), (_, share) in zip(shares, expected):  # rounded for reading: 0 decimals, 1 below 10%
        assert abs(float(pct.rstrip("%")) - share * 100) <= (0.05 if share < 0.1 else 0.5) + 1e-9, (pct, share)
    stances = page.eval_on_selector_all("#stance-distribution .item", "nodes => nodes.map(n => [n.dataset.stance, n.textContent])")
    assert [s for s, _ in stances] == list(summary["stance_distribution"])
    assert page.get_attribute("#article", "lang") == summary["lang"]
    assert f"{summary['n_sentences']} sentences" in page.text_content("#facts")


def test_seed_article_pasted_and_tagged_matches_the_api(page, server, tmp_path):
    text = SEED.read_text(encoding="utf-8")
    tag_on_page(page, text)
    answer = api_answer(server, text, "article")
    check_page_against(page, answer)
    # the article reads as pasted: sentences in place, the paragraphs' line breaks kept
    assert page.text_content("#article").replace(" ", "").startswith(answer["sentences"][0]["text"].replace(" ", ""))
    assert page.eval_on_selector("#article", "n => n.textContent.split('\\n\\n').length") >= text.count("\n\n")

    page.hover(".sentence >> nth=1")  # the scores on hover
    tooltip = page.locator("#tooltip")
    assert tooltip.is_visible()
    second = answer["sentences"][1]
    assert f"Sentence 2 · stance {second['stance']}" in tooltip.text_content()
    assert f"{second['stance_scores'][second['stance']]:.2f}" in tooltip.text_content()
    save_artefact(page, tmp_path, "serve_page_seed_de.png")

    with page.expect_download() as download_info:  # JSONL: the rows of `coopstance predict --format jsonl`
        page.click("#download")
    rows = [json.loads(line) for line in Path(download_info.value.path()).read_text(encoding="utf-8").splitlines()]
    assert rows == [*answer["sentences"], answer["summary"]]
    assert download_info.value.suggested_filename == "article.tagged.jsonl"

    if (topic := page.get_attribute(".share >> nth=0", "data-topic")) is not None:  # clicking a topic dims the other sentences
        page.click(".share >> nth=0")
        dimmed = page.eval_on_selector_all(".sentence", "nodes => nodes.map(n => n.classList.contains('dim'))")
        assert dimmed == [topic not in row["topics"] for row in answer["sentences"]]


def test_file_upload_fills_the_text_and_names_the_download(page, server):
    page.set_input_files("#file", str(SEED))
    page.wait_for_selector("#status:has-text('Opened')")
    assert page.input_value("#text") == SEED.read_text(encoding="utf-8")
    page.click("#tag")
    page.wait_for_selector("#status:has-text('Tagged')")
    check_page_against(page, api_answer(server, SEED.read_text(encoding="utf-8"), SEED.name))
    with page.expect_download() as download_info:
        page.click("#download")
    assert download_info.value.suggested_filename == "trade_ministers_us_japan_korea.de.tagged.jsonl"


@pytest.mark.parametrize(("lang", "text"), [("ja", JA), ("ko", KO)], ids=["ja", "ko"])
def test_japanese_and_korean_articles(page, server, tmp_path, lang, text):
    tag_on_page(page, text)
    answer = api_answer(server, text, "article")
    assert answer["summary"]["lang"] == lang
    check_page_against(page, answer)
    # Korean breaks lines between words, not inside them
    assert page.eval_on_selector("#article", "n => getComputedStyle(n).wordBreak") == ("keep-all" if lang == "ko" else "normal")
    save_artefact(page, tmp_path, f"serve_page_{lang}.png")


def test_over_the_character_limit_the_page_says_so_and_the_server_names_the_limit(page, server):
    page.fill("#text", "Satz. " * 1000)
    assert page.is_disabled("#tag") and "/ 5,000 characters" in page.text_content("#counter")
    assert "over" in (page.get_attribute("#counter", "class") or "")
    # a request sent anyway gets the server's message on the page
    page.evaluate("document.getElementById('tag').disabled = false")
    page.click("#tag")
    page.wait_for_selector("#status.error")
    assert "max_chars_per_article" in page.text_content("#status")
