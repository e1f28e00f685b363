"""Evaluation: honest baseline on any data, the model's own figures reproduced, and every bad input stopped with
the file, line and what to do."""

import importlib.util
import json
import re
import shutil

import pytest
from conftest import REPO, record, write_jsonl

from coopstance.baseline import TfidfBaseline
from coopstance.data import DataError, hashed_split, load_records, load_splits, split_records
from coopstance.evaluation import EvaluationError, read_model_info, run_evaluation


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_splits(cfg, schema):
    splits, _ = split_records(load_records(cfg.data.sources, schema), load_splits(cfg.data.splits_file))
    return splits


def external_articles(cfg, schema, n_articles=4, bucket="train"):
    """Copies of held-out test sentences under new article ids that all hash to `bucket` (the old code trained the
    baseline on the evaluated file's hashed train split, and dropped it when the file had no dev articles)."""
    test = training_splits(cfg, schema)["test"]
    ids = [f"ext-{i}" for i in range(400) if hashed_split(f"ext-{i}") == bucket][:n_articles]
    by_article = {}
    for r in test:
        by_article.setdefault(r.article_id, []).append(r)
    rows = []
    for new_id, sentences in zip(ids, by_article.values()):
        rows += [{**r.to_json(), "article_id": new_id} for r in sentences]
    return rows


def test_an_external_file_never_trains_the_baseline(trained_run, schema, tmp_path, monkeypatch):
    cfg, _ = trained_run
    rows = external_articles(cfg, schema)
    file = write_jsonl(tmp_path / "mine.jsonl", rows)
    fitted_on = {}
    original_fit = TfidfBaseline.fit

    def recording_fit(self, train, dev):
        fitted_on["train"], fitted_on["dev"] = [r.text for r in train], [r.text for r in dev]
        return original_fit(self, train, dev)

    monkeypatch.setattr(TfidfBaseline, "fit", recording_fit)
    evaluation = run_evaluation(cfg.run_dir / "model", "all", sources=[str(file)], bootstrap_samples=0)
    evaluated = {row["text"] for row in rows}
    assert not evaluated & set(fitted_on["train"]) and not evaluated & set(fitted_on["dev"])
    own = training_splits(cfg, schema)
    assert fitted_on["train"] == [r.text for r in own["train"]] and fitted_on["dev"] == [r.text for r in own["dev"]]
    # the file has no dev articles of its own, and the baseline is there all the same
    assert "baseline_scores" in evaluation.metrics and evaluation.metrics["baseline_trained_on"]["train"] == len(own["train"])
    assert evaluation.metrics["model_scores"]["n_sentences"] == len(rows) and not evaluation.own_test_split


def test_a_training_article_id_in_the_evaluated_file_is_leakage(trained_run, schema, tmp_path):
    cfg, _ = trained_run
    train_article = training_splits(cfg, schema)["train"][0]
    rows = external_articles(cfg, schema, n_articles=2) + [record(train_article.article_id, 0, text="A sentence of another article.")]
    file = write_jsonl(tmp_path / "mine.jsonl", rows)
    with pytest.raises(EvaluationError) as err:
        run_evaluation(cfg.run_dir / "model", "all", sources=[str(file)], bootstrap_samples=0, baseline=False)
    message = str(err.value)
    assert f"mine.jsonl:{len(rows)}: article '{train_article.article_id}' is also in the model's train split" in message
    assert "--allow-overlap" in message and "new ids" in message
    evaluation = run_evaluation(cfg.run_dir / "model", "all", sources=[str(file)], bootstrap_samples=0, baseline=False, allow_overlap=True)
    assert any(train_article.article_id in w for w in evaluation.metrics["warnings"])


def test_a_copied_training_sentence_is_flagged(trained_run, schema, tmp_path):
    cfg, _ = trained_run
    train_sentence = training_splits(cfg, schema)["train"][5]
    rows = external_articles(cfg, schema, n_articles=1) + [record("ext-copy", 0, text=train_sentence.text)]
    evaluation = run_evaluation(cfg.run_dir / "model", "all", sources=[str(write_jsonl(tmp_path / "mine.jsonl", rows))],
                                bootstrap_samples=0, baseline=False)
    assert any("same text as a training sentence" in w and train_sentence.where in w for w in evaluation.metrics["warnings"])


def test_the_models_own_dev_split_is_scored_with_a_warning(trained_run):
    cfg, _ = trained_run
    own_file = str(REPO / "data" / "corpus" / "en.jsonl")  # one of the model's own files: its own articles, not leakage
    evaluation = run_evaluation(cfg.run_dir / "model", "dev", sources=[own_file], bootstrap_samples=0, baseline=False)
    assert any("dev split" in w and "optimistic" in w for w in evaluation.metrics["warnings"])


@pytest.mark.parametrize("rows, expected", [
    ([record(topics=["semiconductor"])], "mine.jsonl:1: unknown topic 'semiconductor'. Did you mean 'semiconductors'?"),
    ([record(), {k: v for k, v in record("a-2").items() if k != "stance"}], "mine.jsonl:2: missing field 'stance'"),
    ([], "mine.jsonl: the file is empty"),
])
def test_bad_evaluation_files_stop_with_file_line_and_exit_code_2(trained_run, tmp_path, capsys, rows, expected):
    cfg, _ = trained_run
    file = tmp_path / "mine.jsonl"
    if rows:
        write_jsonl(file, rows)
    else:
        file.write_text("\n")
    with pytest.raises(DataError, match="mine.jsonl"):
        run_evaluation(cfg.run_dir / "model", "all", sources=[str(file)], bootstrap_samples=0)
    evaluate = load_script("evaluate")
    assert evaluate.main([str(cfg.run_dir / "model"), "--sources", str(file), "--split", "all"]) == 2
    assert expected in capsys.readouterr().err


def test_a_split_without_articles_says_use_split_all(trained_run, tmp_path):
    cfg, _ = trained_run
    file = write_jsonl(tmp_path / "mine.jsonl", [record(next(f"x-{i}" for i in range(99) if hashed_split(f"x-{i}") == "train"))])
    with pytest.raises(EvaluationError, match="the test split of .*mine.jsonl.* is empty.*--split all"):
        run_evaluation(cfg.run_dir / "model", "test", sources=[str(file)], bootstrap_samples=0)


def test_a_model_folder_without_label_metadata_is_refused(trained_run, tmp_path):
    cfg, _ = trained_run
    folder = tmp_path / "plain-encoder"
    shutil.copytree(cfg.run_dir / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(len(config["id2label"]))}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvaluationError, match=r"no coopstance label metadata \(id2label is \['LABEL_0'.*topic/<id>.*make train"):
        read_model_info(folder)
    with pytest.raises(FileNotFoundError, match="no exported model here"):
        read_model_info(tmp_path)


def test_a_model_folder_without_training_config_has_no_baseline_and_says_why(trained_run, tmp_path, schema):
    cfg, _ = trained_run
    folder = tmp_path / "model"
    shutil.copytree(cfg.run_dir / "model", folder)
    (folder / "training_config.yaml").unlink()
    file = write_jsonl(tmp_path / "mine.jsonl", external_articles(cfg, schema, n_articles=1))
    with pytest.raises(EvaluationError, match="no training_config.yaml.*--sources"):
        run_evaluation(folder, "test")
    evaluation = run_evaluation(folder, "all", sources=[str(file)], bootstrap_samples=0)
    assert "baseline_scores" not in evaluation.metrics and "data it was trained on is unknown" in evaluation.metrics["baseline_note"]
    assert any("no baseline" in w.lower() for w in evaluation.metrics["warnings"])


def test_training_logs_both_dev_figures_labelled_per_epoch(trained_run):
    cfg, _ = trained_run
    events = b"".join(p.read_bytes() for p in (cfg.run_dir / "logs").rglob("events.out.tfevents*"))
    for tag in (b"eval/topic_macro_f1_at_0.5", b"eval/topic_macro_f1_tuned_on_dev", b"eval/stance_macro_f1"):
        assert tag in events, tag
    assert not re.search(rb"eval/topic_macro_f1(?!_)", events)  # no unlabelled topic figure to mix up with the other
