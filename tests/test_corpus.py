"""`make data-check` is part of the test suite: the shipped corpus must pass it, targets included."""

import json

from conftest import REPO, record, write_jsonl

from coopstance.corpus import Targets, duplicate_problems, main, run_check, split_problems
from coopstance.data import load_records


def test_project_corpus_passes_data_check_with_targets(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "data-check passed" in out and "MISSED" not in out
    assert "topic/semiconductors" in out  # the count table is printed


def test_seed_article_is_gold_annotated_and_in_test():
    splits = json.loads((REPO / "data" / "splits.json").read_text())
    gold = [json.loads(line) for line in (REPO / "seeds" / "trade_ministers_us_japan_korea.de.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["article_id"] for r in gold} <= set(splits["test"])
    assert (REPO / "seeds" / "trade_ministers_us_japan_korea.de.txt").is_file()
    assert any(r["stance"] == "confrontational" for r in gold) and any(r["topics"] for r in gold)


def test_exact_and_near_duplicates_are_caught(tmp_path, schema):
    long = "The ministers agreed to build an early warning system for shortages of chips and critical minerals."
    rows = [
        record("a", 0, text=long),
        record("b", 0, text=long.upper()),  # same after normalising
        record("c", 0, text=long.replace("ministers", "minister")),  # near-duplicate
        record("d", 0, text="A completely different sentence about batteries in Hungary and Poland."),
    ]
    records = load_records([str(write_jsonl(tmp_path / "d.jsonl", rows))], schema)
    problems = duplicate_problems(records)
    assert any("d.jsonl:2: duplicate of" in p and "d.jsonl:1" in p for p in problems)
    assert any("d.jsonl:3: near-duplicate of" in p for p in problems)
    assert not any("d.jsonl:4" in p for p in problems)


def test_split_problems_are_reported(tmp_path, schema):
    rows = [record("a", 0), record("b", 0, text="Other.")]
    records = load_records([str(write_jsonl(tmp_path / "s.jsonl", rows))], schema)
    problems = split_problems(records, {"a": "train", "z": "dev"}, "splits.json", schema, seed_articles={"a"})
    text = "\n".join(problems)
    assert "article 'b' has no split" in text and "lists 'z'" in text and "seed article 'a' must be in test" in text
    assert "the dev split has no sentence for" in text


def test_check_fails_with_file_and_line(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [record("a", 0, stance="friendly")])
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ["a"], "dev": [], "test": []}))
    assert run_check([str(bad)], str(splits), str(REPO / "configs" / "labels.yaml"), Targets()) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: unknown stance 'friendly'" in err
