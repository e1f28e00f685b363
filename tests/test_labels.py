import re
from pathlib import Path

import pytest

from coopstance.labels import LabelSchema, load_schema

REPO = Path(__file__).resolve().parent.parent


def test_schema_has_the_project_labels(schema):
    assert schema.num_topics == 10 and schema.num_stances == 4
    assert schema.stances[0] == "none"
    assert all(schema.descriptions[label] for label in schema.topics + schema.stances)


def test_id2label_round_trip_puts_topics_before_stances(schema):
    id2label = schema.id2label
    assert id2label[0] == f"topic/{schema.topics[0]}"
    assert id2label[schema.num_topics] == f"stance/{schema.stances[0]}"
    rebuilt = LabelSchema.from_id2label({str(k): v for k, v in id2label.items()})
    assert rebuilt.topics == schema.topics and rebuilt.stances == schema.stances


def test_from_id2label_rejects_foreign_heads():
    with pytest.raises(ValueError, match="not a coopstance head"):
        LabelSchema.from_id2label({0: "LABEL_0", 1: "LABEL_1"})


def test_bad_schema_files_name_the_file(tmp_path):
    bad = tmp_path / "labels.yaml"
    bad.write_text("topics: {a: x}\nstances: {a: y}\n")
    with pytest.raises(ValueError, match="labels.yaml: ids used both"):
        load_schema(bad)
    bad.write_text("topics: {a: x}\n")
    with pytest.raises(ValueError, match="stances"):
        load_schema(bad)


def test_no_code_hard_codes_a_label_id(schema):
    """configs/labels.yaml is the only source of label names: no string literal in the code may name one."""
    offenders = []
    for folder in ("coopstance", "train", "eval"):
        for path in (REPO / folder).rglob("*.py"):
            literals = re.findall(r"[\"']([a-z_]+)[\"']", path.read_text(encoding="utf-8"))
            offenders += [f"{path.name}: {lit}" for lit in literals if lit in set(schema.topics) | set(schema.stances) - {"none"}]
    assert offenders == []
