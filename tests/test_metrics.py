import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from coopstance.metrics import (
    article_topic_matrix,
    average_precision,
    bootstrap_indices,
    calibration_bins,
    china_stance_without_china,
    confusion_matrix,
    epoch_dev_scores,
    evaluate_predictions,
    evaluate_probabilities,
    expected_calibration_error,
    format_report,
    headline_scores,
    topic_f1,
    tune_thresholds,
)


def test_topic_f1_matches_hand_computation():
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    pred = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    p, r, f = topic_f1(truth, pred)
    # topic 0: tp=1 fp=1 fn=1 -> P=R=F1=0.5; topic 1: tp=2 fp=0 fn=0 -> 1.0
    assert np.allclose(p, [0.5, 1.0]) and np.allclose(r, [0.5, 1.0]) and np.allclose(f, [0.5, 1.0])


def test_headline_macro_ignores_labels_absent_from_gold():
    truth = np.array([[1, 0], [1, 0]], dtype=bool)
    pred = np.array([[1, 0], [1, 1]], dtype=bool)
    scores = headline_scores(truth, pred, np.array([0, 1]), np.array([0, 0]), num_stances=4)
    assert scores["topic_macro_f1"] == 1.0  # topic 1 has no gold positive: not averaged in
    assert abs(scores["stance_macro_f1"] - (2 / 3 + 0) / 2) < 1e-9
    assert scores["stance_accuracy"] == 0.5


def test_tune_thresholds_finds_the_separating_cut():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.2, 0.4]])
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    thresholds = tune_thresholds(probs, truth)
    assert 0.3 < thresholds[0] <= 0.8
    assert thresholds[1] == 0.5  # no positive on dev: default


def test_bootstrap_resamples_whole_articles():
    ids = ["a", "a", "a", "b", "c", "c"]
    for idx in bootstrap_indices(ids, 20, seed=1):
        drawn = [ids[i] for i in idx]
        assert drawn.count("a") % 3 == 0 and drawn.count("c") % 2 == 0


def test_report_has_intervals_around_the_point_estimate(schema):
    rng = np.random.default_rng(0)
    n = 120
    truth = rng.random((n, schema.num_topics)) < 0.3
    pred = truth ^ (rng.random((n, schema.num_topics)) < 0.2)
    stance_true = rng.integers(0, 4, n)
    stance_pred = np.where(rng.random(n) < 0.7, stance_true, rng.integers(0, 4, n))
    report = evaluate_predictions(truth, pred, stance_true, stance_pred, [f"a{i // 6}" for i in range(n)], schema, 200)
    low, high = report["ci95"]["topic_macro_f1"]
    assert low < report["topic_macro_f1"] < high
    assert report["n_articles"] == 20 and set(report["topics"]) == set(schema.topics)
    table = format_report("test", report, report)
    assert "topic/semiconductors" in table and "baseline F1" in table


# --- Figures beside the tuned-threshold F1, each checked against a value computed by hand -----------------------


def test_average_precision_by_hand():
    # ranked: + (P=1, recall 0.5), -, + (P=2/3, recall 1.0), -  ->  AP = 0.5 * 1 + 0.5 * 2/3
    assert average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(0.5 + 1 / 3)
    # a tie between a positive and a negative is one step: P = 1/2 at recall 1
    assert average_precision(np.array([1, 0]), np.array([0.4, 0.4])) == pytest.approx(0.5)
    assert average_precision(np.array([0, 0]), np.array([0.4, 0.3])) is None  # undefined without positives
    rng = np.random.default_rng(3)
    y, s = rng.random(200) < 0.3, np.round(rng.random(200), 2)  # rounding makes ties
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_expected_calibration_error_by_hand():
    probs = np.array([0.05, 0.15, 0.95, 0.95])
    outcomes = np.array([0, 1, 1, 0])
    # bins [0,.1): |0 - .05| x 1/4; [.1,.2): |1 - .15| x 1/4; [.9,1]: |.5 - .95| x 2/4
    assert expected_calibration_error(probs, outcomes) == pytest.approx(0.05 / 4 + 0.85 / 4 + 0.45 / 2)
    bins = calibration_bins(probs, outcomes)
    assert [b["n"] for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2] and bins[9]["observed_frequency"] == 0.5
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0  # 1.0 falls in the last bin


def test_article_level_topic_f1_by_hand(schema):
    # article a: sentences with topic 0 / none, prediction has topic 0 on the second sentence -> article-level hit
    # article b: gold topic 1 on one sentence, never predicted -> article-level miss; predicted topic 0 -> false positive
    ids = ["a", "a", "b", "b"]
    truth = np.zeros((4, schema.num_topics), dtype=bool)
    truth[0, 0] = truth[3, 1] = True
    probs = np.zeros((4, schema.num_topics))
    probs[1, 0] = probs[2, 0] = 0.9
    assert article_topic_matrix(ids, truth)[:, :2].tolist() == [[True, False], [False, True]]
    stance = np.zeros(4, dtype=int)
    report = evaluate_probabilities(truth, probs, np.full(schema.num_topics, 0.5), stance, np.eye(schema.num_stances)[stance], ids, schema, 0)
    t0, t1 = schema.topics[:2]
    assert report["topics"][t0]["article_f1"] == pytest.approx(2 / 3, abs=1e-4)  # tp=1 fp=1 fn=0
    assert report["topics"][t1]["article_f1"] == 0.0
    assert report["article_topic_macro_f1"] == pytest.approx(1 / 3, abs=1e-4)  # topics absent from gold articles are not averaged
    assert report["topics"][t0]["f1"] == 0.0  # at sentence level topic 0 is never right on the right sentence


def test_bootstrap_resamples_articles_not_sentences():
    # article a: 3 sentences, all right; article b: 1 sentence, wrong. Resampling the two articles can only give an
    # accuracy of 1 (a,a), 3/4 (a,b) or 0 (b,b); a sentence-level bootstrap would also give 1/2, 1/4, ...
    from coopstance.labels import LabelSchema

    schema = LabelSchema(("t",), ("x", "y"), {})
    stance_true, stance_pred = np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1])
    topics = np.zeros((4, 1), dtype=bool)
    accuracies = set()
    for idx in bootstrap_indices(["a", "a", "a", "b"], 300, seed=0):
        accuracies.add(round(float((stance_true[idx] == stance_pred[idx]).mean()), 6))
    assert accuracies == {1.0, 0.75, 0.0}
    report = evaluate_predictions(topics, topics, stance_true, stance_pred, ["a", "a", "a", "b"], schema, 300)
    assert report["ci95"]["stance_accuracy"] == [0.0, 1.0]


def test_confusion_matrix_rows_are_gold():
    assert confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_epoch_dev_scores_label_both_cut_offs():
    truth = np.array([[1], [1], [0], [0]], dtype=bool)
    probs = np.array([[0.4], [0.35], [0.2], [0.1]])  # nothing reaches 0.5; a tuned cut-off near 0.3 separates them
    scores = epoch_dev_scores(truth, probs, np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1]), 2)
    assert scores["topic_macro_f1_at_0.5"] == 0.0 and scores["topic_macro_f1_tuned_on_dev"] == 1.0
    assert "topic_macro_f1" not in scores  # no unlabelled figure that could be compared with the wrong one
    assert scores["selection_score"] == pytest.approx((0.0 + 1.0) / 2)


def test_evaluate_probabilities_intervals_bracket_every_headline_figure(schema):
    rng = np.random.default_rng(1)
    n = 150
    truth = rng.random((n, schema.num_topics)) < 0.3
    probs = np.clip(truth * 0.6 + rng.random((n, schema.num_topics)) * 0.5, 0, 1)
    stance_true = rng.integers(0, schema.num_stances, n)
    stance_probs = rng.dirichlet(np.ones(schema.num_stances), n) + np.eye(schema.num_stances)[stance_true] * 0.5
    stance_probs /= stance_probs.sum(1, keepdims=True)
    report = evaluate_probabilities(truth, probs, np.full(schema.num_topics, 0.5), stance_true, stance_probs,
                                    [f"a{i // 5}" for i in range(n)], schema, 200)
    for key in ("topic_macro_f1", "topic_macro_f1_at_0.5", "topic_macro_pr_auc", "article_topic_macro_f1", "topic_ece", "stance_ece"):
        low, high = report["ci95"][key]
        assert low <= report[key] <= high, key
    # with the thresholds at 0.5 both F1 figures are the same computation
    assert report["topic_macro_f1_at_0.5"] == report["topic_macro_f1"]
    assert sum(map(sum, report["stance_confusion"]["counts"])) == n
    assert sum(b["n"] for b in report["calibration"]["topics"]) == n * schema.num_topics


def test_china_stance_without_china_by_hand_and_by_article_kind(schema):
    none = schema.stances.index("none")
    other = next(i for i, s in enumerate(schema.stances) if s != "none")
    # article a: never refers to China (3 sentences, 1 given a stance); article b: refers to China in its first
    # sentence, 2 gold-none sentences of which both are given a stance
    gold = np.array([none, none, none, other, none, none])
    pred = np.array([none, other, none, other, other, other])
    ids = ["a", "a", "a", "b", "b", "b"]
    result = china_stance_without_china(gold, pred, none, ids)
    assert result["rate"] == round(3 / 5, 4) and result["n_gold_none"] == 5 and result["n_given_a_stance"] == 3
    assert result["in_china_free_articles"] == {"rate": round(1 / 3, 4), "n_gold_none": 3, "n_given_a_stance": 1}
    assert result["in_articles_about_china"] == {"rate": 1.0, "n_gold_none": 2, "n_given_a_stance": 2}
    assert "in_china_free_articles" not in china_stance_without_china(gold, pred, none)
    # evaluate_probabilities reports the same two rates, with intervals
    stance_probs = np.eye(schema.num_stances)[pred]
    truth = np.zeros((6, schema.num_topics), dtype=bool)
    report = evaluate_probabilities(truth, np.zeros_like(truth, dtype=float), np.full(schema.num_topics, 0.5), gold, stance_probs,
                                    ids, schema, 50)
    assert report["china_stance_without_china_rate"] == round(3 / 5, 4)
    assert report["china_stance_in_china_free_articles_rate"] == round(1 / 3, 4)
    low, high = report["ci95"]["china_stance_in_china_free_articles_rate"]
    assert low <= report["china_stance_in_china_free_articles_rate"] <= high
