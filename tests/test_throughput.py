"""Training speed: the FLOP count, the peak table, the throughput callback, the speed keys, bench-train and gpu-check."""

import importlib.util
import json
import sys

import pytest
import torch
from conftest import REPO, tiny_config
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding, TrainerCallback, TrainingArguments

from coopstance.config import ConfigError, load_config
from coopstance.throughput import attach_throughput, device_peak_flops, speed_arguments, training_flops
from coopstance.training import MultiTaskTrainer


def tiny_bert(attention: str = "eager") -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                        num_labels=5, attn_implementation=attention)
    return BertForSequenceClassification(config)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_formula_matches_torch_flop_counter_for_a_training_step():
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_bert()
    batch, length = 2, 128  # long enough for the attention term to matter (a third of the FLOPs here)
    input_ids = torch.randint(5, 500, (batch, length))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits.sum().backward()
    counted = counter.get_total_flops()
    formula = training_flops(model, tokens=batch * length, squared_lengths=batch * length**2)
    # The formula charges the pooler and classifier for every token and ignores the non-matmul work: within 10%.
    assert formula == pytest.approx(counted, rel=0.10)
    without_attention = training_flops(model, tokens=batch * length, squared_lengths=0)
    assert without_attention < 0.8 * counted  # the attention term is needed to match


def test_peak_table_matches_gpu_names(monkeypatch):
    cuda = torch.device("cuda")
    for name, precision, expected in [("NVIDIA H200", "bf16", 989e12), ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
                                      ("NVIDIA H100 PCIe", "bf16", 756e12), ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12),
                                      ("NVIDIA L4", "fp16", 121e12), ("NVIDIA L40S", "bf16", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        peak, source = device_peak_flops(cuda, precision)
        assert peak == expected, name
        assert ("PEAK_FLOPS" in source) == (expected is None)
    peak, source = device_peak_flops(torch.device("cpu"), "fp32")
    assert peak > 1e9 and "measured" in source


class _LogsSeen(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_callback_counts_exactly_the_training_tokens_and_reaches_the_loggers(tmp_path):
    lengths = [3, 2, 8, 8, 5, 5, 12, 12]  # batches of 2 in this order (sequential sampler); only the first pair needs padding
    items = [{"input_ids": [2] + [7] * (n - 2) + [3], "attention_mask": [1] * n, "labels": [0.0, 1.0, 0.0, 1.0]} for n in lengths]
    from coopstance.model import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["a b c d"] * 10, 200)
    model = tiny_bert()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, logging_steps=2, report_to="none",
                             eval_strategy="steps", eval_steps=1, save_strategy="no", train_sampling_strategy="sequential",
                             disable_tqdm=True, use_cpu=True)
    seen = _LogsSeen()
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=items, eval_dataset=items, data_collator=DataCollatorWithPadding(tokenizer),
                               callbacks=[seen], loss_fn_kwargs={"num_topics": 3})
    throughput = attach_throughput(trainer)
    trainer.train()
    summary = throughput.summary()
    real = sum(lengths)
    assert summary["samples"] == 8 and summary["non_padding_tokens"] == real  # evaluation batches are not counted
    assert summary["steps_timed"] == 4
    assert summary["padding_share"] == pytest.approx(1 - real / (2 * (3 + 8 + 5 + 12)), abs=1e-4)
    expected_flops = training_flops(model, real, sum(n * n for n in lengths))
    assert summary["model_tflops_per_second"] == pytest.approx(expected_flops / summary["train_seconds"] / 1e12, rel=0.02, abs=1e-4)
    # MFU against a peak measured on a CPU shared with other jobs can land anywhere; its bookkeeping must hold
    assert summary["mfu"] == pytest.approx(summary["model_tflops_per_second"] / summary["peak_tflops_per_second"], rel=0.05, abs=1e-3)
    assert summary["mfu"] > 0 and summary["peak_memory_gb"] > 0
    training_logs = [log for log in seen.logs if "loss" in log]
    assert len(training_logs) == 2 and all({"samples_per_second", "tokens_per_second", "padding_share", "mfu"} <= set(log) for log in training_logs)
    assert [log for log in seen.logs if "eval_loss" in log] and not any("samples_per_second" in log for log in seen.logs if "eval_loss" in log)


def _padding_and_rises(order: list[int], lengths: list[int], batch_size: int) -> tuple[float, float]:
    batches = [[lengths[i] for i in order[j:j + batch_size]] for j in range(0, len(order), batch_size)]
    padding = 1 - sum(map(sum, batches)) / sum(max(b) * len(b) for b in batches)
    longest = [max(b) for b in batches]
    return padding, sum(b > a for a, b in zip(longest, longest[1:])) / (len(longest) - 1)


def test_length_groups_keep_padding_low_and_come_in_random_order():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from coopstance.throughput import shuffled_length_groups

    lengths = torch.randint(5, 81, (1005,), generator=torch.Generator().manual_seed(0)).tolist()
    order = shuffled_length_groups(lengths, 10, generator=torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(1005)) and [lengths[i] for i in order[-5:]] == sorted((lengths[i] for i in order[-5:]), reverse=True)
    padding, rises = _padding_and_rises(order, lengths, 10)
    random_padding, _ = _padding_and_rises(torch.randperm(1005, generator=torch.Generator().manual_seed(2)).tolist(), lengths, 10)
    assert padding < 0.05 < 0.3 < random_padding
    # transformers' order runs from long to short batches within each mega-batch; ours is random (about half rise)
    _, transformers_rises = _padding_and_rises(get_length_grouped_indices(lengths, 10, generator=torch.Generator().manual_seed(1)), lengths, 10)
    assert transformers_rises < 0.1 < 0.35 < rises


def test_group_by_length_uses_the_shuffled_sampler(tmp_path):
    from coopstance.throughput import ShuffledLengthGroupedSampler

    items = [{"input_ids": [2] * n, "attention_mask": [1] * n, "labels": [0.0, 0.0, 0.0, 1.0]} for n in range(3, 40)]
    samplers = {}
    for strategy in ("group_by_length", "random"):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, report_to="none",
                                 train_sampling_strategy=strategy, use_cpu=True)
        trainer = MultiTaskTrainer(model=tiny_bert(), args=args, train_dataset=items, loss_fn_kwargs={"num_topics": 3})
        samplers[strategy] = trainer._get_train_sampler()
    grouped = samplers["group_by_length"]
    assert isinstance(grouped, ShuffledLengthGroupedSampler) and isinstance(samplers["random"], torch.utils.data.RandomSampler)
    assert grouped.batch_size == 8 and grouped.lengths == list(range(3, 40))  # groups span one optimizer step (4 x 2 accumulated)


def test_every_run_reports_throughput_in_metrics_and_tensorboard(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, metrics = trained_run
    t = metrics["throughput"]
    assert t["samples"] > 0 and t["samples_per_second"] > 0 and t["tokens_per_second"] > 0
    assert 0 <= t["padding_share"] < 1 and t["mfu"] > 0 and t["device"] == "cpu" and t["precision"] == "fp32"
    assert t["non_padding_tokens"] > t["samples"]
    events = [p for p in (cfg.run_dir / "logs").rglob("events.out.tfevents*")]
    tags = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/samples_per_second", "train/tokens_per_second", "train/padding_share", "train/mfu"} <= tags


def test_speed_keys_reach_the_model_and_the_trainer(tmp_path, schema):
    from coopstance.model import build_tiny_model, train_tiny_tokenizer

    cfg = tiny_config(tmp_path, "model.attention=eager", "train.fused_adamw=false", "train.gradient_checkpointing=true")
    tokenizer = train_tiny_tokenizer(["ein Satz", "a sentence"] * 20, 200)
    assert build_tiny_model(cfg.model, schema, tokenizer).config._attn_implementation == "eager"
    assert build_tiny_model(tiny_config(tmp_path).model, schema, tokenizer).config._attn_implementation == "sdpa"
    arguments = speed_arguments(cfg, use_cpu=True)
    assert arguments["optim"] == "adamw_torch" and arguments["activation_checkpointing"] and not arguments["dataloader_pin_memory"]
    defaults = speed_arguments(tiny_config(tmp_path), use_cpu=True)
    assert defaults["optim"] == "adamw_torch_fused" and not defaults["torch_compile"] and not defaults["activation_checkpointing"]
    with pytest.raises(ConfigError, match="model.attention='spda'.*Did you mean 'sdpa'"):
        load_config(REPO / "configs" / "tiny.yaml", ["model.attention=spda"])


def test_bench_train_prints_one_table_for_both_settings(tmp_path, capsys):
    bench = load_script("bench_train")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        code = bench.main(["--arch", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "1", "--variants", "plain", "ours",
                           "--threads", "1", "--json-out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    table = capsys.readouterr().out
    assert "| plain " in table and "| ours " in table and "samples/s" in table and "MFU" in table
    result = json.loads(out.read_text())
    plain, ours = result["variants"]["plain"], result["variants"]["ours"]
    # the same sentences for both: length grouping can only lower the padding
    assert ours["padding_share"] <= plain["padding_share"] and plain["precision"] == ours["precision"] == "fp32"
    for row in (plain, ours):
        assert row["samples_per_second"] > 0 and row["mfu"] > 0


def test_bench_train_rejects_bad_input(capsys):
    bench = load_script("bench_train")
    assert bench.main(["--arch", "tiny", "--variants", "ours:train.epoch=1"]) == 2
    assert "Did you mean 'train.epochs'" in capsys.readouterr().err
    assert bench.main(["--arch", "tiny", "--variants", "fast"]) == 2


def test_gpu_check_summary_block_reports_each_step():
    gpu_check = load_script("gpu_check")
    row = {"samples_per_second": 100.0, "tokens_per_second": 5000.0, "padding_share": 0.4, "mfu": 0.1, "peak_memory_gb": 2.0, "precision": "fp32",
           "speedup": 1.0}
    results = {
        "date": "2026-01-01", "seconds": 200.0, "passed": False,
        "environment": {"torch": "2.13", "cuda_available": True, "cuda_version": "13.0", "gpu": "NVIDIA H200", "gpu_count": 1, "bf16": True,
                        "gpu_memory_gib": 139.8},
        "steps": {
            "bench_train": {"passed": True, "result": {
                "arch": "mbert-size", "batch_size": 32, "max_length": 160, "context_sentences": 1, "steps": 40, "repeats": 3,
                "variants": {"plain": row, "ours": {**row, "samples_per_second": 250.0, "precision": "bf16", "speedup": 2.5}}}},
            "train": {"passed": False, "seconds": 3.0},
            "ddp_2_processes": {"passed": None, "note": "skipped: 1 GPU(s) visible, DDP needs 2"},
        },
    }
    block = gpu_check.summary_block(results)
    assert "NVIDIA H200" in block and "FAILED" in block and "bf16 yes" in block
    assert "2.50x" in block and "tiny config on the device: FAILED" in block and "skipped: 1 GPU(s)" in block


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_cpu(tmp_path):
    import subprocess

    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(REPO / "eval" / "gpu_check.py"), "--cpu-smoke", "--json-out", str(out), "--work-dir", str(tmp_path / "w")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "----- GPU check: paste into README.md -----" in done.stdout
    results = json.loads(out.read_text())
    assert results["passed"] and results["steps"]["train"]["throughput"]["samples"] > 0
    assert results["steps"]["evaluate"]["passed"] and results["steps"]["bench_train"]["result"]["variants"]["ours"]["samples_per_second"] > 0
    assert (tmp_path / "w" / "gpu-check" / "model" / "config.json").is_file()
