"""The entry scripts as users run them: exit codes, messages, and the offline behaviour of `make train`."""

import os
import subprocess
import sys
import time

from conftest import REPO


def run(args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def test_train_without_network_stops_fast_with_the_ways_out(tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    start = time.time()
    out = run(["train/train.py", "--config", "configs/mbert.yaml", f"train.output_root={tmp_path}"], env)
    elapsed = time.time() - start
    assert out.returncode == 2
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert "Cannot load model 'bert-base-multilingual-cased'" in out.stderr
    assert "make train CONFIG=configs/tiny.yaml" in out.stderr and "model.name_or_path=" in out.stderr
    assert not (tmp_path / "mbert").exists()  # nothing half-made


def test_config_typo_is_reported_with_a_suggestion(tmp_path):
    out = run(["train/train.py", "--config", "configs/tiny.yaml", "train.epoch=1", f"train.output_root={tmp_path}"])
    assert out.returncode == 2
    assert "unknown key 'train.epoch'. Did you mean 'train.epochs'?" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_lists_config_keys():
    out = run(["train/train.py", "--help"])
    assert out.returncode == 0 and "train.overwrite" in out.stdout and "data.context_sentences" in out.stdout


def test_predict_and_evaluate_report_a_missing_model(tmp_path):
    out = run(["eval/predict.py", str(tmp_path / "none"), "seeds/trade_ministers_us_japan_korea.de.txt"])
    assert out.returncode == 2 and "no exported model here" in out.stderr
    out = run(["eval/evaluate.py", str(tmp_path / "none")])
    assert out.returncode == 2 and "no exported model here" in out.stderr
    out = run(["eval/predict.py", str(tmp_path), "missing.txt"])
    assert out.returncode == 2 and "missing.txt: no such file" in out.stderr


def test_predict_and_evaluate_on_a_trained_model(trained_run, tmp_path):
    cfg, _ = trained_run
    model = str(cfg.run_dir / "model")
    out = run(["eval/predict.py", model, "seeds/trade_ministers_us_japan_korea.de.txt", "--output", str(tmp_path / "tags.jsonl")])
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "tags.jsonl").read_text(encoding="utf-8").splitlines()) == 12
    out = run(["eval/evaluate.py", model, "--bootstrap", "20", "--output", str(tmp_path / "eval.json")])
    assert out.returncode == 0, out.stderr
    assert "topic/semiconductors" in out.stdout and "baseline F1" in out.stdout and (tmp_path / "eval.json").is_file()
    assert "lang/de" in out.stdout and "hard_case/other_sense" in out.stdout and "spurious_topic_rate" in out.stdout


def test_make_help_lists_the_targets():
    out = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True)
    for target in ("install", "train", "evaluate", "predict", "demo", "test", "lint", "data-check", "help"):
        assert f"make {target}" in out.stdout
