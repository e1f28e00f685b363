import numpy as np
import pytest
from conftest import REPO

from coopstance.baseline import BLEND_GRID, TfidfBaseline, blend, choose_blend_weights
from coopstance.data import load_records, load_splits, split_records


@pytest.fixture(scope="module")
def small_splits(schema):
    records = load_records([str(REPO / "data" / "corpus" / "en.jsonl"), str(REPO / "data" / "corpus" / "de.jsonl")], schema)
    splits, _ = split_records(records, load_splits(str(REPO / "data" / "splits.json")))
    return splits


def test_saved_tfidf_gives_the_same_probabilities_and_thresholds(schema, small_splits, tmp_path):
    fitted = TfidfBaseline(schema, seed=3).fit(small_splits["train"], small_splits["dev"])
    fitted.save(tmp_path / "tfidf")
    loaded = TfidfBaseline.load(tmp_path / "tfidf", schema)
    texts = [r.text for r in small_splits["test"]] + ["芯片出口管制收紧。", "Ein Satz ohne jedes bekannte N-Gramm: ẞẞẞ"]
    for a, b in zip(fitted.scores(texts), loaded.scores(texts)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_array_equal(fitted.thresholds, loaded.thresholds)
    topics, stances = fitted.scores(texts)
    assert np.allclose(stances.sum(1), 1) and ((0 <= topics) & (topics <= 1)).all()


def test_scores_equal_sklearns_own_predict_proba(schema, small_splits):
    from sklearn.linear_model import LogisticRegression

    from coopstance.data import label_matrix

    fitted = TfidfBaseline(schema, seed=0).fit(small_splits["train"], small_splits["dev"])
    x = fitted.vectorizer.transform([r.text for r in small_splits["train"]])
    stance_model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=0).fit(x, label_matrix(small_splits["train"], schema)[1])
    _, stances = fitted.predict_proba(small_splits["test"])
    expected = stance_model.predict_proba(fitted.vectorizer.transform([r.text for r in small_splits["test"]]))
    np.testing.assert_allclose(stances[:, stance_model.classes_], expected, atol=1e-9)


def test_a_missing_or_foreign_saved_model_is_a_clear_error(schema, tmp_path):
    with pytest.raises(FileNotFoundError, match="vectorizer.json: missing.*train.tfidf_second_opinion=false"):
        TfidfBaseline.load(tmp_path / "nothing", schema)


def test_blend_weights_follow_the_better_system_on_dev():
    rng = np.random.default_rng(0)
    topic_true = rng.random((400, 3)) < 0.3
    stance_true = rng.integers(0, 4, 400)
    perfect = (topic_true.astype(float) * 0.8 + 0.1, np.eye(4)[stance_true] * 0.7 + 0.075)
    noise = (rng.random((400, 3)), rng.dirichlet(np.ones(4), 400))
    chosen = choose_blend_weights(perfect, noise, topic_true, stance_true)  # the encoder is right, TF-IDF is noise
    assert chosen["topic_weight"] == 0.0 and chosen["stance_weight"] == 0.0
    chosen = choose_blend_weights(noise, perfect, topic_true, stance_true)
    assert chosen["topic_weight"] >= 0.5 and chosen["stance_weight"] >= 0.5  # the smallest weight that reaches the best
    best = {g["weight"]: g for g in chosen["dev_grid"]}[chosen["topic_weight"]]
    assert best["dev_topic_macro_f1"] == max(g["dev_topic_macro_f1"] for g in chosen["dev_grid"])
    assert [g["weight"] for g in chosen["dev_grid"]] == list(BLEND_GRID)
    topics, stances = blend(perfect, noise, 0.25, 1.0)
    np.testing.assert_allclose(topics, 0.75 * perfect[0] + 0.25 * noise[0])
    np.testing.assert_allclose(stances, noise[1])
