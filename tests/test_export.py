"""`coopstance export-onnx` and the ONNX backends: parity with torch on the test split of the corpus."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from coopstance.cli import main
from coopstance.data import group_articles, label_matrix, load_records, load_splits, split_records
from coopstance.inference import Tagger
from coopstance.metrics import headline_scores, sigmoid, softmax

# int8 against fp32 on the tiny test model, on the test split of the corpus. Measured on a 2-core AMD
# EPYC (AVX-512 VNNI), two runs: topic decisions agree 99.85% and 99.93%, stances 100% and 99.85%, macro-F1 changes
# by at most 0.0003. The bounds allow about 7x the measured disagreement, for other CPUs (int8 kernels differ by instruction set) and
# other tiny-model weights; a broken quantization (wrong scales, a layer left out of the graph) falls far below them.
INT8_MIN_TOPIC_DECISION_AGREEMENT = 0.99
INT8_MIN_STANCE_AGREEMENT = 0.99
INT8_MAX_MACRO_F1_CHANGE = 0.01


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    cfg, _ = trained_run
    model_dir = tmp_path_factory.mktemp("export") / "model"
    shutil.copytree(cfg.run_dir / "model", model_dir)
    assert main(["export-onnx", "--model", str(model_dir), "--int8"]) == 0
    assert (model_dir / "model.onnx").is_file() and (model_dir / "model.int8.onnx").is_file()
    from coopstance.utils import current_umask

    for name in ("model.onnx", "model.int8.onnx"):  # shareable like the rest of the folder, not mkstemp's 0600
        assert (model_dir / name).stat().st_mode & 0o777 == 0o666 & ~current_umask(), name
    return model_dir


@pytest.fixture(scope="module")
def test_articles(schema):
    records = load_records(["data/corpus", "seeds"], schema)
    test = split_records(records, load_splits("data/splits.json"))[0]["test"]
    return group_articles(test)


def outputs(tagger, articles):
    logits = np.concatenate([tagger.logits([r.text for r in rs]) for rs in articles.values()])
    topic_probs, stance_probs = sigmoid(logits[:, :tagger.schema.num_topics]), softmax(logits[:, tagger.schema.num_topics:])
    if tagger.calibration is not None:  # the tags the Tagger gives: thresholds are for calibrated scores
        topic_probs, stance_probs = tagger.calibration.apply(topic_probs, stance_probs)
    return topic_probs, topic_probs >= tagger.thresholds, stance_probs, stance_probs.argmax(1)


def test_fp32_onnx_matches_torch_on_the_test_split(exported, test_articles):
    torch_out = outputs(Tagger(exported, backend="torch", device="cpu"), test_articles)
    onnx_out = outputs(Tagger(exported, backend="onnx"), test_articles)
    assert len(torch_out[0]) > 300
    assert np.abs(torch_out[0] - onnx_out[0]).max() < 1e-4 and np.abs(torch_out[2] - onnx_out[2]).max() < 1e-4
    assert (torch_out[1] == onnx_out[1]).all() and (torch_out[3] == onnx_out[3]).all()


def test_int8_agrees_with_fp32(exported, test_articles, schema):
    fp32 = outputs(Tagger(exported, backend="onnx"), test_articles)
    int8 = outputs(Tagger(exported, backend="onnx-int8"), test_articles)
    topic_agreement = (fp32[1] == int8[1]).mean()
    stance_agreement = (fp32[3] == int8[3]).mean()
    records = [r for rs in test_articles.values() for r in rs]
    topics_true, stances_true = label_matrix(records, schema)
    topics_true, stances_true = np.asarray(topics_true, dtype=bool), np.asarray(stances_true)
    f1 = {name: headline_scores(topics_true, out[1], stances_true, out[3], schema.num_stances) for name, out in (("fp32", fp32), ("int8", int8))}
    change = {k: abs(f1["int8"][k] - f1["fp32"][k]) for k in ("topic_macro_f1", "stance_macro_f1")}
    print(f"int8 vs fp32: topic decisions agree {topic_agreement:.4f}, stance {stance_agreement:.4f}, macro-F1 change {change}")
    assert topic_agreement >= INT8_MIN_TOPIC_DECISION_AGREEMENT and stance_agreement >= INT8_MIN_STANCE_AGREEMENT
    assert max(change.values()) <= INT8_MAX_MACRO_F1_CHANGE


def test_onnx_backend_tags_articles_like_torch(exported):
    text = "Die EU prüft Zölle auf E-Autos aus China. Peking droht mit Gegenmaßnahmen.\nEnde"
    by_torch = Tagger(exported, device="cpu").tag_article(text)
    by_onnx = Tagger(exported, backend="onnx").tag_article(text)
    assert [(t.topics, t.stance, t.start, t.end) for t in by_onnx] == [(t.topics, t.stance, t.start, t.end) for t in by_torch]


def test_export_of_a_bad_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["export-onnx", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no exported model here") and err.count("\n") == 1
    from transformers import BertConfig

    BertConfig(num_labels=3).save_pretrained(tmp_path)
    assert main(["export-onnx", "--model", str(tmp_path)]) == 2
    assert "no coopstance label metadata" in capsys.readouterr().err
    assert not (tmp_path / "model.onnx").exists()


def test_evaluate_scores_the_onnx_backend_into_its_own_report(exported):
    def evaluate(*extra: str) -> None:
        done = subprocess.run([sys.executable, str(REPO / "eval/evaluate.py"), str(exported), "--bootstrap", "0", "--no-baseline", *extra],
                              cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    evaluate("--backend", "onnx")
    folder = exported.parent / "eval" / "test-onnx"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["backend"] == "onnx"
    assert "run with ONNX Runtime (`onnx`)" in (folder / "report.md").read_text(encoding="utf-8")
    evaluate()
    torch_metrics = json.loads((exported.parent / "eval" / "test" / "metrics.json").read_text())
    assert torch_metrics["backend"] == "torch"
    for key in ("topic_macro_f1", "stance_macro_f1"):  # fp32 ONNX gives the torch figures
        assert metrics["model_scores"][key] == pytest.approx(torch_metrics["model_scores"][key], abs=1e-3)
