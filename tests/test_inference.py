"""The inference API (`coopstance.inference`): tagging, batching across articles, output rows, bad models."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from coopstance.inference import Article, Tagger, segment

SENTENCE_FIELDS = {"type", "article_id", "sentence_index", "start", "end", "text", "topics", "stance", "topic_scores", "stance_scores",
                   "truncated"}
ARTICLE_FIELDS = {"type", "article_id", "lang", "n_sentences", "n_truncated", "topic_shares", "stance_distribution",
                  "top_sentence_per_topic", "meta"}
SEED = REPO / "seeds" / "trade_ministers_us_japan_korea.de.txt"


@pytest.fixture(scope="module")
def tagger(trained_run):
    cfg, _ = trained_run
    return Tagger(cfg.run_dir / "model", device="cpu")


def test_tagger_tags_an_article(tagger, schema):
    import coopstance

    assert coopstance.Tagger is Tagger  # the README's `from coopstance import Tagger`
    assert tagger.context_sentences == 1 and tagger.schema.topics == schema.topics
    text = "Washington verschärft die Exportkontrollen für Chips. Peking reagiert mit Zöllen.\nDas Wetter war gut."
    tags = tagger.tag_article(text)
    assert [t.text for t in tags] == ["Washington verschärft die Exportkontrollen für Chips.", "Peking reagiert mit Zöllen.", "Das Wetter war gut."]
    for tag in tags:
        assert text[tag.start:tag.end] == tag.text
        assert tag.stance in schema.stances and set(tag.topics) <= set(schema.topics)
        assert abs(sum(tag.stance_scores.values()) - 1) < 1e-3
        assert tag.topics == [t for t in schema.topics if tag.topic_scores[t] >= tagger.thresholds[schema.topics.index(t)]]
    assert tags[0].to_dict()["text"].startswith("Washington")


def test_batching_across_articles_gives_the_same_tags_as_one_article_at_a_time(trained_run):
    cfg, _ = trained_run
    small = Tagger(cfg.run_dir / "model", device="cpu", batch_size=3)  # batches span articles and get re-sorted
    texts = [SEED.read_text(encoding="utf-8"), "Kurz.", "China kündigt Gegenmaßnahmen an. Die EU prüft Zölle auf E-Autos aus China.", "Ende."]
    results = list(small.tag_articles(Article(id=f"a{i}", text=t) for i, t in enumerate(texts)))
    assert [r.article.id for r in results] == ["a0", "a1", "a2", "a3"]
    for text, result in zip(texts, results):
        alone = small.logits([s.text for s in segment(text)])
        one_by_one = [(t.topics, t.stance) for t in small.tag_article(text)]
        assert [(t.topics, t.stance) for t in result.sentences] == one_by_one
        scores = np.array([[t.topic_scores[k] for k in small.schema.topics] for t in result.sentences])
        expected = 1 / (1 + np.exp(-alone[:, :small.schema.num_topics]))
        if small.calibration is not None:  # the scores are the calibrated probabilities (coopstance.calibration)
            expected = small.calibration.apply(expected, np.full((len(expected), small.schema.num_stances), 0.25))[0]
        assert np.abs(scores - expected).max() < 1e-4


def test_batches_are_sorted_by_length(tagger, monkeypatch):
    widths = []
    forward = tagger._forward
    monkeypatch.setattr(tagger, "_forward", lambda inputs: widths.append(inputs["input_ids"].shape[1]) or forward(inputs))
    monkeypatch.setattr(tagger, "batch_size", 4)
    list(tagger.tag_articles([Article("a", SEED.read_text(encoding="utf-8")), Article("b", "Kurz. Auch kurz. Ein etwas längerer Satz hier.")]))
    assert len(widths) == 4 and widths == sorted(widths)


def test_records_have_the_documented_fields(tagger, schema):
    text = SEED.read_text(encoding="utf-8")
    result = next(tagger.tag_articles([Article(id="seed", text=text, lang="de", meta={"source": "wire"})]))
    rows = result.records()
    assert json.loads(json.dumps(rows)) == rows  # plain JSON
    sentences, summary = rows[:-1], rows[-1]
    assert len(sentences) == 12 and all(set(r) == SENTENCE_FIELDS and r["type"] == "sentence" for r in sentences)
    assert [r["sentence_index"] for r in sentences] == list(range(12))
    assert all(text[r["start"]:r["end"]] == r["text"] and r["article_id"] == "seed" for r in sentences)
    assert set(summary) == ARTICLE_FIELDS and summary["type"] == "article" and summary["lang"] == "de" and summary["n_sentences"] == 12
    assert summary["meta"] == {"source": "wire"}
    for topic, share in summary["topic_shares"].items():
        assert share == round(sum(topic in r["topics"] for r in sentences) / 12, 4)
    assert abs(sum(summary["stance_distribution"].values()) - 1) < 1e-3 and list(summary["stance_distribution"]) == list(schema.stances)
    for topic, top in summary["top_sentence_per_topic"].items():
        best = max(r["topic_scores"][topic] for r in sentences if topic in r["topics"])
        assert top["score"] == best and sentences[top["sentence_index"]]["topic_scores"][topic] == best
    assert set(summary["top_sentence_per_topic"]) == {t for r in sentences for t in r["topics"]}


def test_pre_split_input_keeps_the_sentences_and_offsets(tagger):
    result = next(tagger.tag_articles([Article(id="p", text="", sentences=["Erster Satz. Mit Punkt.", "Zweiter"])]))
    assert [s.text for s in result.sentences] == ["Erster Satz. Mit Punkt.", "Zweiter"]  # not re-segmented
    assert all(result.article.text[s.start:s.end] == s.text for s in result.sentences)


def test_context_changes_the_input(tagger):
    alone = tagger.logits(["Beijing responded."])[0]
    with_context = tagger.logits(["The US added chip firms to the Entity List.", "Beijing responded."])[1]
    assert alone.shape == with_context.shape and not (alone == with_context).all()


def test_a_sentence_longer_than_the_model_limit_is_truncated_and_flagged(tagger):
    long = "Die Regierung " + "und ihre Partner " * 200 + "beschließen neue Zölle."
    result = next(tagger.tag_articles([Article("long", long + " Kurzer Satz.")]))
    assert [s.truncated for s in result.sentences] == [True, False]
    assert result.summary()["n_truncated"] == 1 and result.sentences[0].stance


def test_empty_articles(tagger):
    results = list(tagger.tag_articles([Article("empty", " \n "), Article("full", "Ein Satz.")]))
    assert results[0].sentences == [] and results[0].records() == [results[0].summary()]
    assert results[0].summary()["n_sentences"] == 0 and results[1].summary()["n_sentences"] == 1
    with pytest.raises(ValueError, match="article is empty"):
        tagger.tag_article("\n \n")
    with pytest.raises(ValueError, match="sentence 1 is empty"):
        tagger.tag_sentences(["A sentence.", " "])


def test_label_info_for_the_service(tagger, schema):
    info = tagger.label_info()
    assert [t["id"] for t in info["topics"]] == list(schema.topics) and [s["id"] for s in info["stances"]] == list(schema.stances)
    assert info["topics"][0]["definition"] == schema.descriptions[schema.topics[0]]
    assert [t["threshold"] for t in info["topics"]] == [round(float(x), 4) for x in tagger.thresholds]
    assert info["context_sentences"] == 1 and info["max_seq_length"] == tagger.max_length


def test_bad_model_folders(tmp_path, trained_run):
    with pytest.raises(FileNotFoundError, match="no exported model here.*make train"):
        Tagger(tmp_path)
    from transformers import BertConfig

    BertConfig(num_labels=3).save_pretrained(tmp_path)  # a base model: LABEL_0.., no coopstance labels
    with pytest.raises(ValueError, match=r"config.json: no coopstance label metadata .*not a base encoder"):
        Tagger(tmp_path)
    cfg, _ = trained_run
    with pytest.raises(FileNotFoundError, match=r"model.onnx: not found; export it first: coopstance export-onnx --model"):
        Tagger(cfg.run_dir / "model", backend="onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        Tagger(cfg.run_dir / "model", backend="tensorrt")


def test_inference_needs_neither_onnxruntime_nor_the_training_code(trained_run):
    cfg, _ = trained_run
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"  # as if not installed
        "from coopstance.inference import Tagger\n"
        f"print(len(Tagger(r'{cfg.run_dir / 'model'}', device='cpu').tag_article('Ein Satz. Noch einer.')))\n"
        "assert 'coopstance.training' not in sys.modules and 'coopstance.evaluation' not in sys.modules, sorted(sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "2"
