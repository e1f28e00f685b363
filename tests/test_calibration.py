import json
import shutil

import numpy as np
import pytest

from coopstance.calibration import Calibration, fit_calibration, fit_stance_temperature, fit_topic_platt
from coopstance.metrics import expected_calibration_error, softmax


def _logit(p):
    return np.log(p) - np.log1p(-p)


def test_platt_recovers_a_known_distortion_and_removes_the_calibration_error():
    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.02, 0.98, size=(4000, 5))
    labels = rng.random(true_p.shape) < true_p
    # over-confident and shifted up, as pos_weight makes them: observed = sigmoid(2 * logit(p) + 1)
    observed = 1 / (1 + np.exp(-(2 * _logit(true_p) + 1)))
    a, b = fit_topic_platt(observed, labels)
    # the inverse map is p = sigmoid(0.5 * logit(observed) - 0.5)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-0.5, abs=0.08)
    calibrated, _ = Calibration(a, b).apply(observed, np.full((len(observed), 2), 0.5))
    before = expected_calibration_error(observed.ravel(), labels.ravel())
    after = expected_calibration_error(calibrated.ravel(), labels.ravel())
    assert before > 0.1 and after < 0.02


def test_stance_temperature_undoes_over_confidence():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3000, 4)) * 1.5
    probs = softmax(logits)
    gold = np.array([rng.choice(4, p=p) for p in probs])
    over_confident = softmax(3 * logits)  # the model's logits, three times too large
    assert fit_stance_temperature(over_confident, gold) == pytest.approx(3.0, rel=0.1)


def test_the_maps_are_monotone_so_no_tag_changes():
    rng = np.random.default_rng(2)
    topics, stances = rng.uniform(0.001, 0.999, size=(200, 6)), softmax(rng.normal(size=(200, 4)) * 2)
    cal_topics, cal_stances = Calibration(0.7, -0.4, 2.5).apply(topics, stances)
    for j in range(topics.shape[1]):
        order = np.argsort(topics[:, j])
        assert np.all(np.diff(cal_topics[order, j]) >= 0)
    assert (cal_stances.argmax(1) == stances.argmax(1)).all()
    assert np.allclose(cal_stances.sum(1), 1.0)
    # the identity calibration is a no-op, also for probabilities of exactly 0 and 1
    edge = np.array([[0.0, 1.0, 0.5]])
    same, _ = Calibration().apply(edge, np.array([[1.0, 0.0]]))
    assert np.allclose(same, [[1e-6, 1 - 1e-6, 0.5]], atol=1e-9)


def test_degenerate_dev_sets_give_the_identity():
    assert fit_topic_platt(np.full((10, 3), 0.3), np.zeros((10, 3), dtype=bool)) == (1.0, 0.0)
    assert fit_topic_platt(np.zeros((0, 3)), np.zeros((0, 3), dtype=bool)) == (1.0, 0.0)
    assert fit_stance_temperature(np.zeros((0, 4)), np.zeros(0, dtype=int)) == 1.0
    calibration = fit_calibration(np.full((4, 2), 0.5), np.zeros((4, 2)), np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]))
    assert calibration.topic_scale == 1.0 and calibration.stance_temperature > 0


def test_config_entry_round_trip_and_errors_name_the_file():
    calibration = Calibration(0.8, -0.25, 1.7)
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())), "config.json") == calibration
    with pytest.raises(ValueError, match=r"m/config.json: unknown calibration key\(s\) \['scale'\]; re-export"):
        Calibration.from_dict({"scale": 1.0}, "m/config.json")
    with pytest.raises(ValueError, match="m/config.json: calibration topic_scale and stance_temperature must be > 0"):
        Calibration.from_dict({"stance_temperature": 0}, "m/config.json")


def test_the_tagger_applies_the_exported_calibration(trained_run, tmp_path):
    """Scores of the shared tiny model with its calibration equal the map applied to its scores without it."""
    from coopstance.inference import Tagger

    cfg, metrics = trained_run
    report = metrics["calibration"]
    assert report["fitted_on"] == "dev" and set(report["expected_calibration_error"]) >= {"dev", "test"}
    dev_ece = report["expected_calibration_error"]["dev"]
    assert dev_ece["after"]["topics"] <= dev_ece["before"]["topics"] + 1e-9  # fitted there: it cannot be worse in-sample
    model = cfg.run_dir / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["calibration"] == {k: report[k] for k in ("topic_scale", "topic_shift", "stance_temperature")}
    plain = tmp_path / "plain"
    shutil.copytree(model, plain)
    del config["calibration"]
    (plain / "config.json").write_text(json.dumps(config))
    sentences = ["Chipmakers face new export controls.", "Die Batterieallianz wächst.", "The weather was mild."]
    with_map, without = Tagger(model), Tagger(plain)
    assert without.calibration is None and with_map.label_info()["calibration"] == Calibration(**{
        k: report[k] for k in ("topic_scale", "topic_shift", "stance_temperature")}).to_dict()
    raw = without.tag_sentences(sentences)
    expected_topics, expected_stances = with_map.calibration.apply(
        np.array([[s.topic_scores[t] for t in without.schema.topics] for s in raw]),
        np.array([[s.stance_scores[c] for c in without.schema.stances] for s in raw]))
    tagged = with_map.tag_sentences(sentences)
    got_topics = np.array([[s.topic_scores[t] for t in with_map.schema.topics] for s in tagged])
    got_stances = np.array([[s.stance_scores[c] for c in with_map.schema.stances] for s in tagged])
    assert np.allclose(got_topics, expected_topics, atol=5e-4) and np.allclose(got_stances, expected_stances, atol=5e-4)
    assert [s.stance for s in tagged] == [s.stance for s in raw]
    assert "calibrated on dev" in (model / "README.md").read_text(encoding="utf-8")
