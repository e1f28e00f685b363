import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_config
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from coopstance.training import MultiTaskTrainer, RunFolderError, train

SMALL_SOURCES = "data.sources=[data/corpus/en.jsonl,data/corpus/de.jsonl,seeds]"


def test_run_folder_has_every_output(trained_run):
    cfg, metrics = trained_run
    run = cfg.run_dir
    for name in ("config.yaml", "command.txt", "metrics.json", "model/config.json", "model/model.safetensors",
                 "model/tokenizer.json", "model/training_config.yaml", "logs"):
        assert (run / name).exists(), name
    assert not (run / ".model.tmp").exists()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for split in ("dev", "test"):
        assert 0 <= saved[split]["topic_macro_f1"] <= 1 and saved[split]["ci95"]["stance_macro_f1"] is not None
    assert saved["baseline"]["test"]["n_sentences"] == saved["test"]["n_sentences"]
    assert set(saved["thresholds"]) == set(saved["test"]["topics"])
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "logs").rglob("*"))


def test_export_loads_with_plain_transformers_and_gives_the_checkpoint_logits(trained_run, schema):
    cfg, metrics = trained_run
    model_dir = cfg.run_dir / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"]["0"] == f"topic/{schema.topics[0]}" and len(config["id2label"]) == schema.num_labels
    assert set(config["topic_thresholds"]) == set(schema.topics) and config["context_sentences"] == 1
    best = AutoModelForSequenceClassification.from_pretrained(metrics["best_checkpoint"]).eval()
    batch = tokenizer(["Die Zölle auf Elektroautos steigen.", "芯片出口管制收紧。"], ["[...]", "[...]"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        assert torch.allclose(model(**batch).logits, best(**batch).logits, atol=1e-6)


def test_reloaded_export_reproduces_the_reported_test_scores(trained_run):
    from coopstance.evaluation import evaluate_model

    cfg, metrics = trained_run
    result = evaluate_model(cfg.run_dir / "model", "test", bootstrap_samples=0, baseline=False)
    scores = result["model_scores"]
    assert scores["n_sentences"] == metrics["test"]["n_sentences"]
    assert scores["topic_macro_f1"] == pytest.approx(metrics["test"]["topic_macro_f1"], abs=2e-3)
    assert scores["stance_macro_f1"] == pytest.approx(metrics["test"]["stance_macro_f1"], abs=2e-3)
    # train.report: the run's own test report (its predictions, made before export) says what evaluating the export says
    report = json.loads((cfg.run_dir / "eval" / "test" / "metrics.json").read_text())
    assert report["predictions_from"].startswith("the training run") and (cfg.run_dir / "eval" / "test" / "report.md").is_file()
    for key in ("n_sentences", "topic_macro_f1", "stance_macro_f1"):
        assert report["model_scores"][key] == pytest.approx(scores[key], abs=2e-3), key
    assert report["baseline_scores"]["n_sentences"] == scores["n_sentences"]
    # predictions for other sentences (or in another order) are refused, not scored against the wrong gold labels
    from coopstance.data import load_records, load_splits, split_records
    from coopstance.evaluation import EvaluationError, SystemOutput, run_evaluation
    from coopstance.labels import load_schema

    schema = load_schema(cfg.data.labels_file)
    test = split_records(load_records(cfg.data.sources, schema), load_splits(cfg.data.splits_file))[0]["test"]
    n = len(test)
    output = SystemOutput(np.zeros((n, schema.num_topics)), np.zeros((n, schema.num_topics), bool), np.full((n, schema.num_stances), 0.25),
                          np.zeros(n, int), np.full(schema.num_topics, 0.5))
    with pytest.raises(EvaluationError, match="not for the test split"):
        run_evaluation(cfg.run_dir / "model", "test", bootstrap_samples=0, precomputed=(test[::-1], output))


def test_finished_run_is_not_overwritten(trained_run):
    cfg, _ = trained_run
    with pytest.raises(RunFolderError, match="already holds a finished run.*train.overwrite=true"):
        train(cfg)


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, "train.run_name=killed", SMALL_SOURCES)
    original_step = MultiTaskTrainer.training_step
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > self.state.max_steps // 2 + 3:  # past the first epoch's checkpoint
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(MultiTaskTrainer, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert not (cfg.run_dir / "metrics.json").exists() and not (cfg.run_dir / "model").exists()
    checkpoints = sorted((cfg.run_dir / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    first_epoch_steps = int(checkpoints[0].name.split("-")[1])

    changed = tiny_config(tmp_path, "train.run_name=killed", SMALL_SOURCES, "train.learning_rate=0.5")
    with pytest.raises(RunFolderError, match="train.learning_rate"):
        train(changed)

    monkeypatch.setattr(MultiTaskTrainer, "training_step", original_step)
    calls["n"] = 0
    counted = {"n": 0}

    def counting_step(self, *args, **kwargs):
        counted["n"] += 1
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(MultiTaskTrainer, "training_step", counting_step)
    metrics = train(cfg)
    assert "resuming the unfinished run" in capsys.readouterr().out
    assert metrics["train_steps"] == 2 * first_epoch_steps
    assert counted["n"] == first_epoch_steps  # only the second epoch was trained again
    assert (cfg.run_dir / "model" / "config.json").exists()


def test_empty_split_and_bad_data_stop_the_run(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article_id": "x", "sentence_id": 0, "lang": "en", "text": "", "topics": [], "stance": "none"}\n')
    from coopstance.data import DataError

    with pytest.raises(DataError, match="bad.jsonl:1: empty text"):
        train(tiny_config(tmp_path, f"data.sources=[{bad}]"))


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on Linux")
def test_two_process_ddp_writes_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "train" / "train.py"),
        "--config", str(REPO / "configs" / "tiny.yaml"), f"train.output_root={tmp_path}", "train.run_name=ddp",
        "train.max_steps=6", "train.bootstrap_samples=10", "train.baseline=false", "model.tiny.vocab_size=800",
        "data.sources=[data/corpus/en.jsonl,seeds]",
    ]
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    (tmp_path / "stderr.txt").write_text(out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("[coopstance] run folder:") == 1  # only rank 0 reports and writes
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["train_steps"] == 6
    assert np.isfinite(metrics["train_loss"])
    # a finished run is left lean: checkpoints (optimizer state) are removed once metrics.json is written
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if not p.name.startswith(".")) == [
        "command.txt", "config.yaml", "eval", "logs", "metrics.json", "model", "tokenizer"]  # eval/test/: train.report, rank 0
    assert not list(Path(tmp_path / "ddp").glob(".*tmp*"))


def test_finished_run_is_lean_and_shareable(tmp_path):
    cfg = tiny_config(tmp_path, "train.run_name=lean", SMALL_SOURCES, "train.epochs=1")
    metrics = train(cfg)
    assert metrics["checkpoints_kept"] is False and not (cfg.run_dir / "checkpoints").exists()
    assert "stress" in metrics and 0 <= metrics["stress"]["china_stance_without_china"]["rate"] <= 1
    # written via temporary files, but with the usual umask permissions (not mkstemp's 0600)
    from coopstance.utils import current_umask

    for name in ("metrics.json", "config.yaml", "command.txt", "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (cfg.run_dir / name).stat().st_mode & 0o777 == 0o666 & ~current_umask(), name


def test_same_seed_same_run(tmp_path):
    runs = [train(tiny_config(tmp_path, f"train.run_name=seed{i}", SMALL_SOURCES, "train.epochs=1")) for i in range(2)]
    assert runs[0]["train_loss"] == runs[1]["train_loss"]
    assert runs[0]["test"] == runs[1]["test"]


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
def test_any_encoder_from_a_local_folder(tmp_path, arch):
    """The path mbert.yaml and xlmr.yaml take (AutoTokenizer + AutoModelForSequenceClassification with a new head),
    exercised offline with small random encoders saved the way a downloaded hub checkpoint is: no classifier head."""
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    from coopstance.model import train_tiny_tokenizer

    texts = [line for line in (REPO / "data" / "corpus" / "en.jsonl").read_text(encoding="utf-8").splitlines()]
    tokenizer = train_tiny_tokenizer(texts, 600)
    sizes = {"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "pad_token_id": tokenizer.pad_token_id}
    encoder = BertModel(BertConfig(**sizes)) if arch == "bert" else XLMRobertaModel(
        XLMRobertaConfig(type_vocab_size=2, max_position_embeddings=520, **sizes))
    folder = tmp_path / f"local-{arch}"
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = tiny_config(tmp_path, f"model.name_or_path={folder}", "train.run_name=local", SMALL_SOURCES, "train.epochs=1")
    metrics = train(cfg)
    exported = AutoModelForSequenceClassification.from_pretrained(cfg.run_dir / "model")
    assert exported.config.model_type == arch and exported.config.num_labels == 14
    assert metrics["test"]["n_sentences"] > 0


def test_overwrite_starts_afresh_and_is_needed_for_a_finished_run(tmp_path):
    from accelerate import PartialState

    from coopstance.training import prepare_run_dir

    state = PartialState(cpu=True)
    cfg = tiny_config(tmp_path, "train.run_name=old")
    (cfg.run_dir / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (cfg.run_dir / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError, match="finished run"):
        prepare_run_dir(cfg, state)
    assert (cfg.run_dir / "metrics.json").exists()
    fresh = tiny_config(tmp_path, "train.run_name=old", "train.overwrite=true")
    assert prepare_run_dir(fresh, state) is None
    assert not cfg.run_dir.exists()


def test_head_learning_rate_and_layer_decay_reach_the_optimizer_and_keep_their_ratios(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                                     intermediate_size=32, num_labels=5))
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # model.freeze_word_embeddings
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, weight_decay=0.01, report_to="none", use_cpu=True,
                             max_steps=10, warmup_steps=0)
    trainer = MultiTaskTrainer(model=model, args=args, loss_fn_kwargs={"num_topics": 4}, head_learning_rate=1e-3, layer_lr_decay=0.5)
    trainer.create_optimizer_and_scheduler(10)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    expected = {
        "bert.encoder.layer.2.attention.self.query.weight": (1e-4, 0.01),
        "bert.encoder.layer.1.output.dense.weight": (5e-5, 0.01),
        "bert.encoder.layer.0.output.LayerNorm.weight": (2.5e-5, 0.0),
        "bert.embeddings.position_embeddings.weight": (1.25e-5, 0.01),
        "bert.pooler.dense.weight": (1e-3, 0.01),
        "classifier.bias": (1e-3, 0.0),
    }
    for name, (lr, wd) in expected.items():
        assert lr_of[id(params[name])] == (pytest.approx(lr), wd), name
    assert id(params["bert.embeddings.word_embeddings.weight"]) not in lr_of  # frozen: not in the optimizer
    assert len(lr_of) == sum(p.requires_grad for p in model.parameters())
    for _ in range(3):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    by_lr = sorted({g["lr"] for g in trainer.optimizer.param_groups})
    assert by_lr[-1] / by_lr[0] == pytest.approx(1e-3 / 1.25e-5)  # the schedule scales every group alike


def test_without_the_options_the_optimizer_is_trainers_own(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=32, num_labels=5))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, report_to="none", use_cpu=True, max_steps=1)
    trainer = MultiTaskTrainer(model=model, args=args, loss_fn_kwargs={"num_topics": 4})
    trainer.create_optimizer()
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-4} and len(trainer.optimizer.param_groups) == 2


def test_tfidf_second_opinion_is_chosen_on_dev_exported_and_applied_by_the_tagger(tmp_path, monkeypatch):
    from coopstance.baseline import TfidfBaseline
    from coopstance.evaluation import run_evaluation
    from coopstance.inference import Tagger

    cfg = tiny_config(tmp_path, "train.run_name=blend", SMALL_SOURCES, "train.epochs=1", "train.tfidf_second_opinion=true",
                      "train.baseline=true")
    metrics = train(cfg)
    opinion = metrics["second_opinion"]
    assert opinion["chosen_on"] == "dev" and len(opinion["dev_grid"]) == 10
    assert set(opinion["encoder_alone"]) == {"dev", "test", "stress"}
    config = json.loads((cfg.run_dir / "model" / "config.json").read_text())
    assert config["second_opinion"] == {"kind": "tfidf", "folder": "tfidf", "topic_weight": opinion["topic_weight"],
                                        "stance_weight": opinion["stance_weight"]}
    assert opinion["topic_weight"] > 0  # a random-init tiny model always needs the help
    tagger = Tagger(cfg.run_dir / "model")
    assert tagger.second_opinion is not None and tagger.label_info()["second_opinion"]["topic_weight"] == opinion["topic_weight"]
    # the tagger reproduces the blended test figures, and evaluate reuses the exported TF-IDF model instead of refitting
    monkeypatch.setattr(TfidfBaseline, "fit", lambda *a, **k: pytest.fail("the exported TF-IDF model should be reused"))
    evaluation = run_evaluation(cfg.run_dir / "model", "test", bootstrap_samples=0)
    for key in ("topic_macro_f1", "stance_macro_f1"):
        assert evaluation.metrics["model_scores"][key] == pytest.approx(metrics["test"][key], abs=2e-3)
        assert evaluation.metrics["baseline_scores"][key] == pytest.approx(metrics["baseline"]["test"][key], abs=1e-9)
    card = (cfg.run_dir / "model" / "README.md").read_text(encoding="utf-8")
    assert "`tfidf/`" in card and "encoder alone" in card


def test_headline_context_is_trained_exported_and_rebuilt_by_the_tagger(tmp_path):
    from coopstance.data import load_records, model_inputs
    from coopstance.inference import Tagger

    cfg = tiny_config(tmp_path, "train.run_name=headline", SMALL_SOURCES, "train.max_steps=2", "data.context_headline=true")
    train(cfg)
    model = cfg.run_dir / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["context_headline"] is True and config["context_sentences"] == 0
    assert "first sentence (its headline)" in (model / "README.md").read_text(encoding="utf-8")
    tagger = Tagger(model)
    assert tagger.label_info()["context_headline"] is True
    # the tagger builds the pairs training built
    every = load_records(cfg.data.sources, tagger.schema)
    records = [r for r in every if r.article_id == every[0].article_id]
    texts, pairs = model_inputs(records, 0, context_headline=True)
    dataset_ids = tagger.tokenizer(texts, pairs, truncation=True, max_length=tagger.max_length)["input_ids"]
    assert [item.encoding["input_ids"] for item in tagger._items_for(texts)] == dataset_ids
    # and the headline reaches every later sentence
    body = ["Die Regierung reagierte.", "Die Gespräche dauerten zwei Stunden."]
    first, second = tagger.logits(["China und Deutschland vereinbaren Kooperation.", *body]), tagger.logits(["Wetterbericht.", *body])
    assert not np.allclose(first[2], second[2])


def test_full_precision_undoes_the_mixed_precision_forward():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from coopstance.training import cpu_supports_bf16, full_precision

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    AcceleratorState._reset_state(True)  # a process-wide singleton: earlier runs in this process set it to fp32, as Trainer does
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(8, 64)
    with torch.no_grad():
        exact = layer(x)
        mixed = Accelerator(cpu=True, mixed_precision="bf16").prepare_model(layer)
        autocast = mixed(x)
        assert not torch.allclose(autocast, exact, atol=1e-4)  # the prepared forward runs in bf16
        with full_precision(mixed):
            assert torch.equal(mixed(x), exact)
        assert torch.equal(mixed(x), autocast)  # and the training forward is back afterwards
    AcceleratorState._reset_state(True)


def test_bf16_on_cpu_trains_in_bf16_and_reports_fp32_predictions(tmp_path):
    from coopstance.evaluation import evaluate_model
    from coopstance.training import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    cfg = tiny_config(tmp_path, "train.run_name=bf16", SMALL_SOURCES, "train.max_steps=4", "train.precision=bf16")
    metrics = train(cfg)
    assert metrics["throughput"]["precision"] == "bf16"
    assert metrics["throughput"]["peak_source"].startswith("bf16 matmul")
    # the reported figures are those of the exported fp32 model, as the Tagger computes them
    scores = evaluate_model(cfg.run_dir / "model", "test", bootstrap_samples=0, baseline=False)["model_scores"]
    for key in ("topic_macro_f1", "stance_macro_f1"):
        assert scores[key] == pytest.approx(metrics["test"][key], abs=2e-3)
