import pytest

from coopstance.inference import Tagger, split_sentences


def test_split_sentences_latin_and_cjk():
    text = "Die U.S. Regierung handelt. „Wir sind bereit“, sagte Dr. Meier. Ende\n日本は発表した。「協力する」と述べた。중국은 반발했다. 끝"
    assert split_sentences(text) == [
        "Die U.S. Regierung handelt.", "„Wir sind bereit“, sagte Dr. Meier.", "Ende",
        "日本は発表した。", "「協力する」と述べた。", "중국은 반발했다.", "끝",
    ]
    assert split_sentences("  \n\n ") == []


def test_seed_article_splits_into_its_gold_sentences():
    import json
    from pathlib import Path

    seeds = Path(__file__).resolve().parent.parent / "seeds"
    gold = [json.loads(line)["text"] for line in (seeds / "trade_ministers_us_japan_korea.de.jsonl").read_text(encoding="utf-8").splitlines()]
    assert split_sentences((seeds / "trade_ministers_us_japan_korea.de.txt").read_text(encoding="utf-8")) == gold


def test_tagger_tags_an_article(trained_run, schema):
    import coopstance

    cfg, _ = trained_run
    assert coopstance.Tagger is Tagger  # the README's `from coopstance import Tagger`
    tagger = Tagger(cfg.run_dir / "model", device="cpu")
    assert tagger.context_sentences == 1 and tagger.schema.topics == schema.topics
    tags = tagger.tag_article("Washington verschärft die Exportkontrollen für Chips. Peking reagiert mit Zöllen.\nDas Wetter war gut.")
    assert len(tags) == 3
    for tag in tags:
        assert tag.stance in schema.stances and set(tag.topics) <= set(schema.topics)
        assert abs(sum(tag.stance_scores.values()) - 1) < 1e-3
        assert tag.topics == [t for t in schema.topics if tag.topic_scores[t] >= tagger.thresholds[schema.topics.index(t)]]
    assert tags[0].to_dict()["text"].startswith("Washington")


def test_context_changes_the_input(trained_run):
    cfg, _ = trained_run
    tagger = Tagger(cfg.run_dir / "model", device="cpu")
    alone = tagger.logits(["Beijing responded."])[0]
    with_context = tagger.logits(["The US added chip firms to the Entity List.", "Beijing responded."])[1]
    assert alone.shape == with_context.shape and not (alone == with_context).all()


def test_missing_checkpoint_and_empty_input(tmp_path, trained_run):
    with pytest.raises(FileNotFoundError, match="no exported model here.*make train"):
        Tagger(tmp_path)
    cfg, _ = trained_run
    tagger = Tagger(cfg.run_dir / "model", device="cpu")
    with pytest.raises(ValueError, match="article is empty"):
        tagger.tag_article("\n \n")
    with pytest.raises(ValueError, match="sentence 1 is empty"):
        tagger.tag_sentences(["A sentence.", " "])
