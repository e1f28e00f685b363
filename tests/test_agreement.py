import pytest
from conftest import REPO

from coopstance.agreement import agreement, cohen_kappa, read_labels


def test_kappa_hand_computed():
    # 10 items: observed 0.8; both have 6 yes -> expected 0.6*0.6 + 0.4*0.4 = 0.52 -> kappa 0.28 / 0.48
    a = ["y"] * 6 + ["n"] * 4
    b = ["y"] * 5 + ["n"] * 1 + ["n"] * 3 + ["y"] * 1
    assert cohen_kappa(a, b) == pytest.approx(0.28 / 0.48)
    assert cohen_kappa(["x"] * 3, ["x"] * 3) == 1.0
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


def test_shipped_agreement_study_covers_ten_percent(schema):
    folder = REPO / "data" / "agreement"
    first = read_labels([folder / "first_pass.jsonl"])
    second = read_labels(sorted(folder.glob("second_pass_*.jsonl")))
    result = agreement(first, second, schema.topics)
    assert result["n_sentences"] >= 200
    assert set(result["topics"]) == set(schema.topics) and -1 <= result["stance"]["kappa"] <= 1
