import numpy as np

from coopstance.metrics import bootstrap_indices, evaluate_predictions, format_report, headline_scores, topic_f1, tune_thresholds


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
