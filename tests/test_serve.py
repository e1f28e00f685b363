"""`coopstance serve` over real HTTP: a server process on loopback, every endpoint, every limit, bad input, batching."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import REPO, write_jsonl
from serve_server import running_server, serving_in_thread

from coopstance import __version__

SEED = REPO / "seeds" / "trade_ministers_us_japan_korea.de.txt"
JA = "日米韓の経済閣僚は水曜日、ワシントンで初めて会合を開いた。半導体や重要鉱物のサプライチェーン強化で協力することで一致した。"
KO = "한미일 산업장관들이 수요일 워싱턴에서 처음으로 만났다. 세 나라는 반도체와 배터리 공급망 협력을 강화하기로 했다."
# Small limits, so that each can be crossed cheaply; the seed article (2,883 characters, 11 sentences) fits.
LIMITS = {"max_chars_per_article": 4000, "max_sentences": 40, "max_articles": 4, "max_body_bytes": 30000}


@pytest.fixture(scope="module")
def model_dir(trained_run):
    cfg, _ = trained_run
    return cfg.run_dir / "model"


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    args = [f"--{name.replace('_', '-')}={value}" for name, value in LIMITS.items()]
    # A long batching wait makes the batching test deterministic on a busy machine.
    # One model thread: on a shared 2-core machine, torch with 2 threads waits on itself (20x slower when busy).
    with running_server(model_dir, tmp_path_factory.mktemp("serve") / "server.log", *args, "--batch-wait-ms", "50", "--threads", "1") as server:
        yield server
        assert server.alive(), server.log_tail()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def tag(client, body):
    response = client.post("/v1/tag", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def rows_of(answer):
    """The response's rows in `coopstance predict --format jsonl` order."""
    return [row for article in answer["articles"] for row in [*article["sentences"], article["summary"]]]


def predict_jsonl(model_dir, path):
    """`coopstance predict --format jsonl` (in this process: the same code path, without a second torch import)."""
    from coopstance.cli import main

    output = path.with_suffix(".tagged.jsonl")
    assert main(["predict", "--model", str(model_dir), str(path), "--format", "jsonl", "--output", str(output), "--quiet"]) == 0
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# Endpoints.


def test_health_reports_model_backend_version_and_limits(client, model_dir):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "torch" and health["version"] == __version__
    assert health["model"] == str(model_dir) and health["model_name"] == model_dir.parent.name
    assert health["limits"] == {**LIMITS, "max_queue_sentences": 20000}
    assert health["batching"] == {"enabled": True, "wait_ms": 50.0, "max_sentences": 256}


def test_labels_are_the_taggers(client, model_dir):
    from coopstance.inference import Tagger

    assert client.get("/v1/labels").json() == json.loads(json.dumps(Tagger(model_dir, device="cpu").label_info()))


def test_docs_and_openapi_are_served_without_a_cdn(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    scripts = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert scripts and not [s for s in scripts if s.startswith(("http:", "https:", "//"))], scripts
    for asset in scripts:
        assert client.get(asset).status_code == 200, asset
    schema = client.get("/openapi.json").json()
    assert {"/v1/tag", "/v1/labels", "/health"} <= set(schema["paths"])
    assert {"413", "422"} <= set(schema["paths"]["/v1/tag"]["post"]["responses"])


def test_page_is_one_file_without_external_fonts_or_scripts(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<textarea" in page.text and 'type="file"' in page.text and "Download JSONL" in page.text
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text) and "@import" not in page.text and "url(http" not in page.text


# ---------------------------------------------------------------------------------------------------------------
# POST /v1/tag answers the rows of `coopstance predict --format jsonl`.


def test_tag_answers_the_rows_of_predict_jsonl(client, model_dir, tmp_path):
    text = SEED.read_text(encoding="utf-8")
    articles = [{"id": "seed", "text": text}, {"id": "ja-1", "text": JA}, {"id": "ko-1", "text": KO, "lang": "ko"}]
    expected = predict_jsonl(model_dir, write_jsonl(tmp_path / "articles.jsonl", articles))
    answer = tag(client, {"articles": articles})
    assert [a["id"] for a in answer["articles"]] == ["seed", "ja-1", "ko-1"]
    assert rows_of(answer) == expected
    assert [a["summary"]["lang"] for a in answer["articles"]] == ["de", "ja", "ko"]
    for article in answer["articles"]:
        source = {a["id"]: a["text"] for a in articles}[article["id"]]
        assert article["sentences"] and all(source[r["start"]:r["end"]] == r["text"] for r in article["sentences"])
    # one article alone, as raw text: the same rows as that article's in the batch of three
    single = tag(client, {"article": text, "id": "seed"})
    assert rows_of(single) == expected[:len(single["articles"][0]["sentences"]) + 1]


def test_tag_pre_split_sentences_like_predict(client, model_dir, tmp_path):
    sentences = ["Washington added 140 Chinese chip firms to the Entity List.", "Beijing said it would hit back.", "Trade talks resume in May."]
    records = [{"article_id": "s-1", "sentence_id": i, "text": s, "lang": "en"} for i, s in enumerate(sentences)]
    expected = predict_jsonl(model_dir, write_jsonl(tmp_path / "sentences.jsonl", records))
    answer = tag(client, {"sentences": sentences, "id": "s-1", "lang": "en"})
    *rows, summary = rows_of(answer)
    assert rows == expected[:-1] and [r["text"] for r in rows] == sentences
    assert summary == {**expected[-1], "meta": {}}  # predict records where the sentences came from; the API has no file


def test_meta_and_ids_come_back(client):
    answer = tag(client, {"articles": [{"text": "Hallo Welt.", "meta": {"url": "https://example.org/1"}}, {"id": 7, "text": "Zweiter Artikel."}]})
    assert [a["id"] for a in answer["articles"]] == ["0", "7"]
    assert answer["articles"][0]["summary"]["meta"] == {"url": "https://example.org/1"}
    assert tag(client, {"article": "Ein Satz."})["articles"][0]["id"] == "0"


# ---------------------------------------------------------------------------------------------------------------
# Limits: 413 with a JSON error that names the limit.


def assert_limit(response, limit, field=None):
    assert response.status_code == 413, response.text
    error = response.json()
    assert error["error"] == "limit_exceeded" and error["limit"] == limit and error["max"] == LIMITS[limit]
    assert f"--{limit.replace('_', '-')}" in error["message"]
    if field:
        assert error["field"] == field


def test_limits_answer_413_naming_the_limit(client):
    assert_limit(client.post("/v1/tag", json={"article": "Satz. " * 700}), "max_chars_per_article", "article")
    assert_limit(client.post("/v1/tag", json={"articles": [{"text": "kurz."}, {"text": "x" * 4001}]}), "max_chars_per_article", "articles[1].text")
    assert_limit(client.post("/v1/tag", json={"sentences": ["Ein Satz."] * 41}), "max_sentences")
    assert_limit(client.post("/v1/tag", json={"article": "\n".join(["Eine Zeile."] * 41)}), "max_sentences")  # counted after segmentation
    assert_limit(client.post("/v1/tag", json={"articles": [{"text": "Ein Satz."}] * 5}), "max_articles", "articles")
    assert tag(client, {"sentences": ["Ein Satz."] * 40}) and tag(client, {"articles": [{"text": "Ein Satz."}] * 4})  # at the limits: fine


def test_body_size_limit_declared_and_streamed(client, server):
    body = json.dumps({"articles": [{"text": "Ein Satz. " * 300}] * 12}).encode()
    assert len(body) > LIMITS["max_body_bytes"]
    declared = client.post("/v1/tag", content=body, headers={"Content-Type": "application/json"})
    assert_limit(declared, "max_body_bytes")
    assert declared.json()["value"] == len(body)

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    streamed = client.post("/v1/tag", content=chunks(), headers={"Content-Type": "application/json"})
    assert_limit(streamed, "max_body_bytes")
    assert client.get("/health").status_code == 200 and server.alive()


# ---------------------------------------------------------------------------------------------------------------
# Bad input: 422 naming the field; the service keeps answering after each.

BAD_BODIES = [
    ("not json", b'{"article": ', "application/json", "body", "not valid JSON"),
    ("not utf-8", b'{"article": "\xff\xfe"}', "application/json", "body", "not valid UTF-8"),
    ("nested too deep", b"[" * 5000 + b"]" * 5000, "application/json", "body", "nested too deeply"),
    ("array", b"[1, 2]", "application/json", "body", "expected a JSON object"),
    ("null", b"null", "application/json", "body", "expected a JSON object"),
    ("empty body", b"", "application/json", "body", "empty"),
    ("form content type", b'{"article": "x"}', "application/x-www-form-urlencoded", "body", "Content-Type: application/json"),
    ("nothing to tag", b"{}", "application/json", "body", "exactly one of"),
    ("two inputs", b'{"article": "x", "sentences": ["y"]}', "application/json", "body", "exactly one of"),
    ("typo", b'{"artcle": "x"}', "application/json", "artcle", "Did you mean 'article'?"),
    ("typo in article", b'{"articles": [{"txt": "x"}]}', "application/json", "articles[0].text", "required field is missing"),
    ("wrong type", b'{"article": 5}', "application/json", "article", "valid string"),
    ("wrong list", b'{"sentences": "one sentence"}', "application/json", "sentences", "valid list"),
    ("wrong item", b'{"sentences": ["ok", 3]}', "application/json", "sentences[1]", "valid string"),
    ("wrong meta", b'{"articles": [{"text": "x", "meta": "m"}]}', "application/json", "articles[0].meta", "valid dictionary"),
    ("empty text", b'{"article": "  \\n "}', "application/json", "article", "empty text"),
    ("empty sentence", b'{"sentences": ["ok", " "]}', "application/json", "sentences[1]", "empty sentence"),
    ("empty list", b'{"sentences": []}', "application/json", "sentences", "empty list"),
    ("no articles", b'{"articles": []}', "application/json", "articles", "empty list"),
    ("empty article text", b'{"articles": [{"text": "ok"}, {"text": ""}]}', "application/json", "articles[1].text", "empty text"),
    ("id beside articles", b'{"articles": [{"text": "ok"}], "id": "a"}', "application/json", "body", "inside each article"),
]


@pytest.mark.parametrize(("body", "content_type", "field", "message"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bad_input_is_422_naming_the_field(client, server, body, content_type, field, message):
    response = client.post("/v1/tag", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_request" and error["field"] == field and message in error["message"], error
    assert server.alive() and client.get("/health").status_code == 200


def test_unknown_path_and_wrong_method_are_json_errors(client):
    missing = client.get("/v1/tags")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found" and "/docs" in missing.json()["message"]
    wrong = client.get("/v1/tag")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_broken_connections_do_not_hang_the_server(client, server):
    host, port = server.url.removeprefix("http://").split(":")
    partial_body = b'POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"article": "Hal'
    for raw in (b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Le", partial_body, b"\x16\x03\x01 not http at all\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(raw)
    # a client that gives up while its article is being tagged
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/tag", json={"article": SEED.read_text(encoding="utf-8")}, timeout=0.001)
    started = time.monotonic()
    assert tag(client, {"article": "Ein Satz."}) and time.monotonic() - started < 30
    assert server.alive()


# ---------------------------------------------------------------------------------------------------------------
# Micro-batching.


def test_concurrent_requests_share_model_calls_and_get_their_own_answers(client, server):
    sentences = [f"Satz Nummer {i}: Die Minister sprachen über Halbleiter und Batterien." for i in range(40)]
    alone = {s: tag(client, {"sentences": [s]}) for s in sentences[:3]}
    before = client.get("/health").json()["stats"]
    barrier = threading.Barrier(len(sentences))

    def send(sentence):
        barrier.wait()
        return sentence, httpx.post(server.url + "/v1/tag", json={"sentences": [sentence], "id": sentence[:14]}, timeout=60)

    with ThreadPoolExecutor(len(sentences)) as pool:
        answers = list(pool.map(send, sentences))
    for sentence, response in answers:
        assert response.status_code == 200, response.text
        (article,) = response.json()["articles"]
        assert article["id"] == sentence[:14] and [r["text"] for r in article["sentences"]] == [sentence]
        if sentence in alone:  # padding beside other requests may move the last digit, not the decision
            row, single = article["sentences"][0], alone[sentence]["articles"][0]["sentences"][0]
            assert row["topic_scores"] == pytest.approx(single["topic_scores"], abs=2e-4) and row["stance"] == single["stance"]
    after = client.get("/health").json()["stats"]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == len(sentences)
    assert batches <= len(sentences) // 2 and after["largest_batch_requests"] >= 4, after  # typically 2-5 calls for the 40


@pytest.fixture(scope="module")
def tagger(model_dir):
    from coopstance.inference import Tagger

    return Tagger(model_dir, device="cpu")


def test_without_batching_each_request_is_its_own_model_call(tagger):
    from coopstance.serve.app import Batching, Limits, create_app

    with serving_in_thread(create_app(tagger, Limits(max_queue_sentences=20), Batching(enabled=False))) as url:
        sentences = [f"Satz {i} über Exportkontrollen." for i in range(12)]
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda s: httpx.post(url + "/v1/tag", json={"sentences": [s]}, timeout=60), sentences))
        assert all(r.status_code == 200 for r in responses)
        stats = httpx.get(url + "/health").json()["stats"]
        assert stats["batches"] == stats["requests"] == 12 and stats["largest_batch_requests"] == 1
        # more sentences than may wait for the model: 503, retry later
        busy = httpx.post(url + "/v1/tag", json={"sentences": ["Ein Satz."] * 21}, timeout=60)
        assert busy.status_code == 503 and busy.json()["limit"] == "max_queue_sentences" and busy.headers["retry-after"]


# ---------------------------------------------------------------------------------------------------------------
# A failing model call and the command line.


class FailingOnce:
    """The tagger, except that its first call raises (a GPU out of memory, say)."""

    def __init__(self, tagger):
        self.tagger, self.calls = tagger, 0

    def __getattr__(self, name):
        return getattr(self.tagger, name)

    def tag_articles(self, articles):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.tagger.tag_articles(articles)


def test_a_failing_model_call_answers_500_and_the_service_goes_on(tagger):
    from coopstance.serve.app import create_app

    with serving_in_thread(create_app(FailingOnce(tagger))) as url:
        failed = httpx.post(url + "/v1/tag", json={"article": "Ein Satz."}, timeout=30)
        assert failed.status_code == 500 and failed.json()["error"] == "internal_error" and "simulated" in failed.json()["message"]
        assert httpx.post(url + "/v1/tag", json={"article": "Ein Satz."}, timeout=30).status_code == 200
        assert httpx.get(url + "/health").json()["stats"]["failed_batches"] == 1


def test_command_line_errors_exit_2(tmp_path, model_dir, capsys):
    from coopstance.cli import main

    assert main(["serve", "--model", str(tmp_path / "none")]) == 2
    assert "no exported model here" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir), "--max-sentences", "0"]) == 2
    assert "--max-sentences must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--max-chars-per-article" in out and "--no-batching" in out
