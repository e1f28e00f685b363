import json

import pytest
from conftest import record, write_jsonl

from coopstance.data import (
    DataError,
    context_pair,
    group_articles,
    hashed_split,
    label_matrix,
    load_records,
    load_splits,
    make_splits,
    model_inputs,
    split_records,
)


def test_loads_jsonl_and_keeps_extra_fields(tmp_path, schema):
    path = write_jsonl(tmp_path / "a.jsonl", [record(sentence_id=0, genre="wire"), record(sentence_id=1, topics=["batteries"])])
    records = load_records([str(path)], schema)
    assert [r.sentence_id for r in records] == [0, 1]
    assert records[0].extra == {"genre": "wire"} and records[1].topics == ["batteries"]
    assert records[0].where == f"{path}:1"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"topics": ["semiconductor"]}, "unknown topic 'semiconductor'. Did you mean 'semiconductors'?"),
        ({"stance": "hostile"}, "unknown stance 'hostile'"),
        ({"text": "   "}, "empty text"),
        ({"sentence_id": -1}, "sentence_id must be an integer >= 0"),
        ({"lang": "german"}, "two-letter ISO 639-1"),
        ({"topics": "batteries"}, None),  # a bare string is accepted as a one-topic CSV-style cell
        ({"topics": ["batteries", "batteries"]}, "topic listed twice"),
    ],
)
def test_bad_records_name_file_line_and_problem(tmp_path, schema, bad, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [record(sentence_id=0), {**record(sentence_id=1), **bad}])
    if expected is None:
        assert load_records([str(path)], schema)[1].topics == ["batteries"]
        return
    with pytest.raises(DataError) as err:
        load_records([str(path)], schema)
    assert f"{path}:2: " in str(err.value) and expected in str(err.value)


def test_missing_field_and_malformed_line(tmp_path, schema):
    path = tmp_path / "broken.jsonl"
    row = record(sentence_id=1)
    del row["stance"]
    path.write_text(json.dumps(record()) + "\n" + json.dumps(row) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records([str(path)], schema)
    message = str(err.value)
    assert "2 problem(s)" in message
    assert f"{path}:2: missing field 'stance'" in message
    assert f"{path}:3: not valid JSON" in message


def test_duplicate_ids_across_files(tmp_path, schema):
    a = write_jsonl(tmp_path / "a.jsonl", [record("x", 0)])
    b = write_jsonl(tmp_path / "b.jsonl", [record("x", 0, text="Another sentence.")])
    with pytest.raises(DataError, match=r"b.jsonl:1: duplicate \(article_id, sentence_id\) = \('x', 0\), first at .*a.jsonl:1"):
        load_records([str(a), str(b)], schema)


def test_csv_and_parquet_sources(tmp_path, schema):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "mine.csv"
    csv_path.write_text(
        "article_id,sentence_id,lang,text,topics,stance\n"
        "m-1,0,fr,Une phrase.,batteries;trade_measures,neutral\n"
        "m-1,1,fr,Une autre.,,none\n",
        encoding="utf-8",
    )
    rows = [record("p-1", 0, topics=["ai_safety"]), record("p-1", 1)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine.parquet")
    records = load_records([str(tmp_path)], schema)  # a folder: every supported file inside
    by_id = {(r.article_id, r.sentence_id): r for r in records}
    assert by_id[("m-1", 0)].topics == ["batteries", "trade_measures"] and by_id[("m-1", 1)].topics == []
    assert by_id[("p-1", 0)].topics == ["ai_safety"]
    bad = tmp_path / "bad.csv"
    bad.write_text('article_id,sentence_id,lang,text,topics,stance\nm-2,0,fr,Phrase.,battery,none\nm-2,1,fr,Deux.,"[""x""",none\n',
                   encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records([str(bad)], schema)
    assert "bad.csv:2: unknown topic 'battery'. Did you mean 'batteries'" in str(err.value)
    assert "bad.csv:3: topics must be a list of topic ids" in str(err.value)


def test_missing_source_names_the_path(tmp_path, schema):
    with pytest.raises(DataError, match="no such file or folder"):
        load_records([str(tmp_path / "nope.jsonl")], schema)


def _toy_corpus(schema, langs=("de", "en", "fr"), per_lang=10):
    rows = []
    for lang in langs:
        for a in range(per_lang):
            article = f"{lang}-{a:03d}"
            for s, stance in enumerate(schema.stances):
                rows.append(record(article, s, lang=lang, text=f"{article} {s}", topics=[schema.topics[(a + s) % 10]], stance=stance))
    return rows


def test_make_splits_is_disjoint_deterministic_and_forces_seed_into_test(tmp_path, schema):
    path = write_jsonl(tmp_path / "c.jsonl", _toy_corpus(schema))
    records = load_records([str(path)], schema)
    splits = make_splits(records, schema, force_test=["de-000"])
    assert splits == make_splits(records, schema, force_test=["de-000"])
    ids = [set(v) for v in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {r.article_id for r in records}
    assert "de-000" in splits["test"]
    for split in ("dev", "test"):
        assert {a[:2] for a in splits[split]} == {"de", "en", "fr"}


def test_make_splits_extend_keeps_every_earlier_assignment(tmp_path, schema):
    records = load_records([str(write_jsonl(tmp_path / "c.jsonl", _toy_corpus(schema)))], schema)
    all_ids = sorted({r.article_id for r in records})
    old = set(all_ids[::2])  # an earlier, smaller corpus, split on its own
    earlier = make_splits([r for r in records if r.article_id in old], schema, seed=3)
    keep = {a: s for s, ids in earlier.items() for a in ids}
    grown = make_splits(records, schema, seed=5, keep=keep)
    assert {a: s for s, ids in grown.items() for a in ids if a in old} == keep
    assert set().union(*map(set, grown.values())) == set(all_ids)


def test_make_splits_new_split_sends_every_new_article_to_one_split(tmp_path, schema):
    records = load_records([str(write_jsonl(tmp_path / "c.jsonl", _toy_corpus(schema)))], schema)
    all_ids = sorted({r.article_id for r in records})
    old = set(all_ids[::2])
    keep = {a: s for s, ids in make_splits([r for r in records if r.article_id in old], schema, seed=3).items() for a in ids}
    grown = make_splits(records, schema, seed=5, keep=keep, new_split="train")
    assert {a: s for s, ids in grown.items() for a in ids if a in old} == keep
    assert set(grown["train"]) == {a for a, s in keep.items() if s == "train"} | (set(all_ids) - old)
    with pytest.raises(DataError, match="use one of train, dev, test"):
        make_splits(records, schema, keep=keep, new_split="holdout")


def test_split_records_never_splits_an_article(tmp_path, schema):
    path = write_jsonl(tmp_path / "c.jsonl", _toy_corpus(schema))
    records = load_records([str(path)], schema)
    assignment = {a: s for s, ids in make_splits(records, schema).items() for a in ids}
    parts, unlisted = split_records(records, assignment)
    assert unlisted == []
    owners = {}
    for split, rs in parts.items():
        for r in rs:
            assert owners.setdefault(r.article_id, split) == split


def test_unlisted_articles_get_a_stable_hashed_split(tmp_path, schema):
    rows = [record(f"user-{i}", 0) for i in range(200)]
    records = load_records([str(write_jsonl(tmp_path / "u.jsonl", rows))], schema)
    parts, unlisted = split_records(records, {})
    assert len(unlisted) == 200
    assert hashed_split("user-7") == hashed_split("user-7")
    assert 100 < len(parts["train"]) < 190 and parts["dev"] and parts["test"]


def test_splits_file_errors(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"train": ["a"], "test": ["a"]}))
    with pytest.raises(DataError, match="'a' is in both 'train' and 'test'"):
        load_splits(bad)
    bad.write_text(json.dumps({"training": ["a"]}))
    with pytest.raises(DataError, match="unknown split names"):
        load_splits(bad)
    with pytest.raises(DataError, match="make-splits"):
        load_splits(tmp_path / "missing.json")


def test_context_pairs_come_from_the_same_article(tmp_path, schema):
    rows = [record("a", i, text=f"A{i}") for i in range(3)] + [record("b", i, text=f"B{i}") for i in range(2)]
    records = load_records([str(write_jsonl(tmp_path / "c.jsonl", rows))], schema)
    texts, pairs = model_inputs(records, 1)
    assert texts[1] == "A1" and pairs[1] == "A0 [...] A2"
    assert pairs[0] == "[...] A1" and pairs[3] == "[...] B1"
    assert model_inputs(records, 0)[1] == [None] * 5
    assert context_pair(["x", "y", "z"], 2, 2) == "x y [...]"
    assert list(group_articles(records)) == ["a", "b"]


def test_headline_context_leads_the_segment_unless_it_is_already_there(tmp_path, schema):
    sentences = ["H", "s1", "s2", "s3"]
    assert [context_pair(sentences, i, 0, headline=True) for i in range(4)] == ["", "H", "H", "H"]
    assert [context_pair(sentences, i, 1, headline=True) for i in range(4)] == ["[...] s1", "H [...] s2", "H [...] s1 [...] s3",
                                                                                "H [...] s2 [...]"]
    assert context_pair(sentences, 3, 2, headline=True) == "H [...] s1 s2 [...]"
    assert context_pair(sentences, 2, 2, headline=True) == "H s1 [...] s3"  # the headline is already a neighbour
    rows = [record("a", i, text=t) for i, t in enumerate(sentences)] + [record("b", 0, text="B0"), record("b", 1, text="B1")]
    records = load_records([str(write_jsonl(tmp_path / "c.jsonl", rows))], schema)
    assert model_inputs(records, 0, context_headline=True)[1] == ["", "H", "H", "H", "", "B0"]


def test_label_matrix_follows_schema_order(tmp_path, schema):
    rows = [record(topics=[schema.topics[3], schema.topics[0]], stance=schema.stances[2])]
    records = load_records([str(write_jsonl(tmp_path / "c.jsonl", rows))], schema)
    topics, stances = label_matrix(records, schema)
    assert topics == [[1.0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0]] and stances == [2]


def test_hub_source_goes_through_datasets(tmp_path, schema):
    """`hub:<name>` is handed to datasets.load_dataset; a local folder exercises the same path without network."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [record("h-1", 0, topics=["cybersecurity"]), record("h-1", 1)])
    records = load_records([f"hub:{folder}"], schema)
    assert [(r.article_id, r.sentence_id, r.topics) for r in records] == [("h-1", 0, ["cybersecurity"]), ("h-1", 1, [])]
    assert records[0].where == f"hub:{folder}:row 1"
    with pytest.raises(DataError, match="could not load the dataset"):
        load_records([f"hub:{tmp_path / 'nothing-here'}"], schema)
