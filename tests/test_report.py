"""The report folder, the model card, eval/compare.py and the study scripts."""

import importlib.util
import json
import shutil
import struct

import numpy as np
import pytest
import yaml
from conftest import REPO

from coopstance.evaluation import run_evaluation
from coopstance.labels import load_schema
from coopstance.metrics import headline_scores
from coopstance.report import PLOTS, report_name, write_report

SMALL = ["model.tiny.vocab_size=800", "data.sources=[data/corpus/en.jsonl,data/corpus/de.jsonl,seeds]", "data.stress_sources=[]",
         "train.max_steps=3", "train.baseline=false", "train.bootstrap_samples=20"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory):
    cfg, _ = trained_run
    evaluation = run_evaluation(cfg.run_dir / "model", "test", bootstrap_samples=50)
    folder = tmp_path_factory.mktemp("report") / "test"
    write_report(evaluation, folder)
    return evaluation, folder


def test_own_test_split_reproduces_the_training_figures_baseline_included(report, trained_run):
    _, metrics = trained_run
    evaluation, _ = report
    model, baseline = evaluation.metrics["model_scores"], evaluation.metrics["baseline_scores"]
    assert model["n_sentences"] == metrics["test"]["n_sentences"]
    assert model["topic_macro_f1"] == pytest.approx(metrics["test"]["topic_macro_f1"], abs=1e-4)
    assert model["stance_macro_f1"] == pytest.approx(metrics["test"]["stance_macro_f1"], abs=1e-4)
    # the same baseline as in training: fitted on the model's own train split, thresholds on its dev split
    assert baseline["topic_macro_f1"] == metrics["baseline"]["test"]["topic_macro_f1"]
    assert baseline["stance_macro_f1"] == metrics["baseline"]["test"]["stance_macro_f1"]
    assert evaluation.own_test_split and evaluation.metrics["warnings"] == []


def test_report_folder_has_every_file_and_plot(report):
    _, folder = report
    names = {p.name for p in folder.iterdir()}
    assert {"report.md", "metrics.json", "predictions.jsonl"} <= names
    for name, _ in PLOTS:
        width, height = png_size(folder / name)
        assert width >= 400 and height >= 250, name
        assert (folder / name).stat().st_size > 10_000, f"{name} looks empty"
    assert not list(folder.parent.glob(".*tmp*"))


def test_report_md_is_filled_from_the_computation(report):
    evaluation, folder = report
    text = (folder / "report.md").read_text(encoding="utf-8")
    metrics = evaluation.metrics
    for section in ("## What was evaluated", "## Headline", "## Topics", "## Stance toward China", "## By language", "## Hard cases",
                    "## Calibration", "## Error analysis", "### Stance"):
        assert section in text, section
    for name, caption in PLOTS:
        assert f"]({name})" in text and caption in text
    model, baseline = metrics["model_scores"], metrics["baseline_scores"]
    ci = model["ci95"]["topic_macro_f1"]
    assert f"| Topic macro-F1, tuned thresholds | {model['topic_macro_f1']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}] | {baseline['topic_macro_f1']:.3f}" in text
    for key in ("Topic macro PR-AUC", "Article-level topic macro-F1", "Topic macro-F1 at 0.5", "Topic calibration error (ECE)"):
        assert f"| {key} | " in text
    for lang, counts in metrics["data"].items():
        assert f"| {lang} | {counts['articles']} | {counts['sentences']} |" in text
    # error analysis: the most confident false positive of some topic is quoted with its score
    j = int(np.argmax((evaluation.model.topic_pred & ~evaluation.topic_true).sum(0)))
    fp = [i for i in np.argsort(-evaluation.model.topic_probs[:, j], kind="stable")
          if evaluation.model.topic_pred[i, j] and not evaluation.topic_true[i, j]][0]
    r = evaluation.records[fp]
    assert f"`{r.article_id}:{r.sentence_id}`" in text and f"**{evaluation.model.topic_probs[fp, j]:.2f}**" in text
    assert "Gold `" in text and "predicted `" in text and "previous sentence:" in text


def test_predictions_jsonl_recomputes_the_reported_figures(report):
    evaluation, folder = report
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    schema = load_schema(REPO / "configs" / "labels.yaml")
    assert len(rows) == metrics["model_scores"]["n_sentences"]
    truth = np.array([[t in r["gold"]["topics"] for t in schema.topics] for r in rows])
    for system, key in (("predicted", "model_scores"), ("baseline", "baseline_scores")):
        pred = np.array([[t in r[system]["topics"] for t in schema.topics] for r in rows])
        stance_true = np.array([schema.stances.index(r["gold"]["stance"]) for r in rows])
        stance_pred = np.array([schema.stances.index(r[system]["stance"]) for r in rows])
        scores = headline_scores(truth, pred, stance_true, stance_pred, schema.num_stances)
        assert scores["topic_macro_f1"] == pytest.approx(metrics[key]["topic_macro_f1"], abs=1e-4)
        assert scores["stance_macro_f1"] == pytest.approx(metrics[key]["stance_macro_f1"], abs=1e-4)
    assert set(rows[0]["predicted"]["topic_scores"]) == set(schema.topics) and rows[0]["text"]
    for key in ("topic_macro_f1", "topic_macro_pr_auc", "article_topic_macro_f1", "topic_ece", "stance_ece"):
        assert metrics["model_scores"]["ci95"][key] is not None, key


def test_report_name_says_what_was_evaluated():
    assert report_name("test", None) == "test"
    assert report_name("all", ["data/stress"]) == "stress"
    assert report_name("test", ["/x/my annotations.jsonl", "b.csv"]) == "my_annotations+b-test"


def test_model_card_written_at_export_and_refreshed_by_evaluate(trained_run, tmp_path, capsys):
    cfg, metrics = trained_run
    card = (cfg.run_dir / "model" / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["language"] == ["de", "en", "fr", "ja", "ko", "zh"] and front["pipeline_tag"] == "text-classification"
    results = {m["name"]: m["value"] for r in front["model-index"][0]["results"] for m in r["metrics"]}
    assert results["Topic macro-F1 (tuned thresholds)"] == pytest.approx(metrics["test"]["topic_macro_f1"])
    assert results["Stance macro-F1"] == pytest.approx(metrics["test"]["stance_macro_f1"])
    no_china = metrics["test"]["china_stance_without_china"]
    assert no_china["in_china_free_articles"]["n_gold_none"] > 0  # the test split has articles that never refer to China
    assert results["China stance given in articles that never refer to China"] == pytest.approx(no_china["in_china_free_articles"]["rate"])
    assert "base_model" not in front  # the tiny model has none
    assert "chips, chip design" in card and "Tagger(" in card and "AutoModelForSequenceClassification" in card
    assert f"{metrics['baseline']['test']['topic_macro_f1']:.3f}" in card  # the baseline beside the model

    copy = tmp_path / "run" / "model"
    shutil.copytree(cfg.run_dir / "model", copy)
    assert load_script("evaluate").main([str(copy), "--bootstrap", "0", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert f"report: {copy.parent / 'eval' / 'test' / 'report.md'}" in out and "model card refreshed" in out
    refreshed = (copy / "README.md").read_text(encoding="utf-8")
    assert "Topic macro PR-AUC" in refreshed and "`make evaluate`" in refreshed and "Topic macro PR-AUC" not in card


def test_compare_puts_reports_side_by_side(report, tmp_path, capsys):
    evaluation, folder = report
    compare = load_script("compare")
    assert compare.main([str(folder), str(folder / "metrics.json"), "--names", "a", "b", "--baseline", "--output", str(tmp_path / "c.md")]) == 0
    table = (tmp_path / "c.md").read_text()
    value = f"{evaluation.metrics['model_scores']['topic_macro_f1']:.3f}"
    assert "| figure | `a` | baseline | `b` | baseline |" in table
    assert table.count(f"| Topic macro-F1, tuned thresholds | {value}") == 1 and "topic F1: `semiconductors`" in table
    assert "different data" not in table
    assert compare.main([str(folder), "--names", "a", "b"]) == 2
    assert compare.main([str(tmp_path / "nothing")]) == 2 and "no metrics.json here" in capsys.readouterr().err


def test_cv_folds_partition_the_articles_by_language(schema):
    from coopstance.data import group_articles, load_records
    from coopstance.studies import article_folds

    records = load_records([str(REPO / "data" / "corpus" / "en.jsonl"), str(REPO / "data" / "corpus" / "de.jsonl")], schema)
    folds = article_folds(records, 3, seed=1)
    articles = set(group_articles(records))
    tests = [set(f["test"]) for f in folds]
    assert set().union(*tests) == articles and sum(map(len, tests)) == len(articles)  # each article is tested exactly once
    for fold in folds:
        assert set(fold["train"]) | set(fold["dev"]) | set(fold["test"]) == articles
        assert not set(fold["train"]) & set(fold["dev"]) and not set(fold["dev"]) & set(fold["test"])
        assert {a[:2] for a in fold["test"]} == {a[:2] for a in fold["dev"]} == {"de", "en"}  # every language in dev and test


def test_a_study_reuses_a_run_saved_before_a_key_existed_and_says_so():
    from coopstance.studies import _same_config

    wanted = {"model": {"name_or_path": "m", "freeze_layers": 0}, "train": {"seed": 1, "overwrite": True, "calibrate": True}}
    older = {"model": {"name_or_path": "m"}, "train": {"seed": 1, "overwrite": False}}
    assert _same_config(older, wanted) == (True, ["model.freeze_layers", "train.calibrate"])
    assert _same_config({"model": {"name_or_path": "m"}, "train": {"seed": 2}}, wanted)[0] is False
    assert _same_config({"model": {"name_or_path": "m", "freeze_layers": 6}, "train": {"seed": 1, "calibrate": True}}, wanted)[0] is False


@pytest.mark.slow
def test_study_scripts_run_end_to_end_with_the_tiny_model(tmp_path):
    """Each study on the smallest budget (3 optimizer steps, two languages): the scripts, the reuse of finished runs,
    and the tables. About 3 minutes on 2 busy cores."""
    common = ["--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tmp_path), "--bootstrap", "20", *SMALL]
    assert load_script("xling").main(["--languages", "en", *common]) == 0
    assert load_script("ablate_context").main(["--contexts", "0,1", "--speed-repeats", "1", *common]) == 0
    assert load_script("cv").main(["--folds", "2", *common]) == 0
    xling = (tmp_path / "xling-tiny.md").read_text()
    assert "| en | " in xling and "**mean**" in xling
    context = json.loads((tmp_path / "ablate-context-tiny.json").read_text())["contexts"]
    assert set(context) == {"context_0", "context_1"} and context["context_1"]["tagging_sentences_per_s"] > 0
    cv = json.loads((tmp_path / "cv-tiny.json").read_text())
    assert len(cv["folds"]) == 2 and cv["summary"]["model"]["topic_macro_f1"]["sd"] >= 0
    for run in ("xling-tiny/all", "xling-tiny/without-en", "ablate-context-tiny/ctx1", "cv-tiny/fold-2"):
        assert (tmp_path / "runs" / run / "model" / "README.md").is_file(), run
    assert (tmp_path / "runs" / "ablate-context-tiny" / "ctx0" / "eval" / "test" / "report.md").is_file()
    # a second call reuses the finished runs instead of training again
    before = (tmp_path / "runs" / "cv-tiny" / "fold-1" / "metrics.json").stat().st_mtime
    assert load_script("cv").main(["--folds", "2", *common]) == 0
    assert (tmp_path / "runs" / "cv-tiny" / "fold-1" / "metrics.json").stat().st_mtime == before


def test_study_scripts_refuse_bad_input(tmp_path, capsys):
    assert load_script("cv").main(["--folds", "1"]) == 2
    assert load_script("xling").main(["--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(tmp_path), "train.epoch=1"]) == 2
    assert "Did you mean 'train.epochs'?" in capsys.readouterr().err
