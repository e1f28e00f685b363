"""Training throughput: the plain `Trainer` defaults against our settings, measured side by side in one run.

    make bench-train                                              # small architecture on CPU, under 2 minutes
    python eval/bench_train.py --arch mbert-size                  # on a GPU: bert-base-multilingual-cased's shape
    python eval/bench_train.py --arch e5-small --steps 8          # the real encoder (make encoder builds it)
    python eval/bench_train.py --arch small --variants ours ours:model.attention=eager ours:train.fused_adamw=false

Variants: `plain` is `TrainingArguments` left at its defaults (random batches, fp32, transformers' default attention
and optimizer) with only the batch size set; `ours` is the architecture's config file (configs/*.yaml: length-grouped
batches, precision auto = bf16 on a GPU that has it, the speed keys of coopstance.throughput.speed_arguments);
`ours:key=value,...` is that config with overrides. Both use dynamic padding (pad to the longest in the batch).

Architectures are built from their configs with random weights (no weights can be downloaded; speed does not depend on
them), except e5-small, read from models/. Batches are real training-split sentences (inputs built as the config
builds them, context included), tokenized with the e5-small tokenizer where it is built, else with a WordPiece
tokenizer trained on the corpus; token ids are folded into the architecture's vocabulary. Each repeat groups the whole
training split as `train.group_by_length` does in training (coopstance.throughput.shuffled_length_groups) and draws
--steps of its batches at random; variants with length grouping train on those batches, the others on the same
sentences shuffled into random batches. So every variant sees exactly the same tokens, and the grouped batches are a
fair sample of a real epoch's. Each variant first runs --warmup untimed steps (allocation, kernel choice,
compilation). Repeats are interleaved, so a busy moment on a shared machine hits every variant alike; the table
gives medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
    PrinterCallback,
    TrainingArguments,
    XLMRobertaConfig,
)

from coopstance.config import ConfigError, RunConfig, load_config
from coopstance.data import load_records, load_splits, split_records
from coopstance.labels import REPO_ROOT, LabelSchema, load_schema
from coopstance.model import train_tiny_tokenizer
from coopstance.throughput import attach_throughput, shuffled_length_groups, speed_arguments
from coopstance.training import EncodedDataset, MultiTaskTrainer, resolve_precision

E5_DIR = REPO_ROOT / "models" / "multilingual-e5-small"
# name -> (the run config whose settings `ours` uses, the architecture's transformers config)
ARCHITECTURES: dict[str, tuple[str, Callable[[], PretrainedConfig]]] = {
    "tiny": ("configs/tiny.yaml", lambda: BertConfig(vocab_size=3000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                                      intermediate_size=256)),
    "small": ("configs/tiny.yaml", lambda: BertConfig(vocab_size=30000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                       intermediate_size=1024)),
    "mbert-size": ("configs/mbert.yaml", lambda: BertConfig(vocab_size=119547)),  # bert-base-multilingual-cased: 768 x 12 layers
    "xlmr-size": ("configs/xlmr.yaml", lambda: XLMRobertaConfig(
        vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        layer_norm_eps=1e-5)),
    "e5-small": ("configs/e5-small.yaml", lambda: AutoConfig.from_pretrained(E5_DIR)),
}


class BenchError(ValueError):
    """Bad command-line input; main() prints it and exits with code 2."""


def variant_config(arch: str, variant: str) -> RunConfig:
    """The run config of `ours` / `ours:key=value,...` for `arch` (for `plain`: only its batch size and inputs are used)."""
    overrides = variant.split(":", 1)[1].split(",") if ":" in variant else []
    try:
        return load_config(ARCHITECTURES[arch][0], overrides)
    except ConfigError as err:
        raise BenchError(f"variant {variant!r}: {err}") from None


def default_variants(arch: str) -> list[str]:
    """plain, ours, and ours with freeze_word_embeddings flipped (the CPU fine-tuning option)."""
    frozen = variant_config(arch, "ours").model.freeze_word_embeddings
    return ["plain", "ours", f"ours:model.freeze_word_embeddings={str(not frozen).lower()}"]


def length_tokenizer() -> tuple[Any, str]:
    if (E5_DIR / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(E5_DIR), "multilingual-e5-small (XLM-R SentencePiece)"
    return None, "WordPiece trained on the training split (models/multilingual-e5-small not built)"


def encoded_training_split(cfg: RunConfig, schema: LabelSchema, vocab_size: int, type_vocab_size: int) -> tuple[list[dict[str, Any]], Any, str]:
    """Every training sentence as the config's model inputs, ids folded into `vocab_size`; the tokenizer (it pads) and its name."""
    records = load_records(cfg.data.sources, schema)
    train = split_records(records, load_splits(cfg.data.splits_file))[0]["train"]
    tokenizer, name = length_tokenizer()
    if tokenizer is None:
        tokenizer = train_tiny_tokenizer([r.text for r in train], 3000)
    dataset = EncodedDataset(train, tokenizer, schema, cfg)
    items = []
    for i in range(len(dataset)):
        item = dataset[i]
        item["input_ids"] = [t % vocab_size for t in item["input_ids"]]
        if type_vocab_size < 2:
            item.pop("token_type_ids", None)
        items.append(item)
    return items, tokenizer, name


def build_model(arch: str, attention: str | None, freeze_word_embeddings: bool, num_labels: int) -> PreTrainedModel:
    torch.manual_seed(0)
    extra = {"attn_implementation": attention} if attention else {}  # None: transformers' default, as for `plain`
    if arch == "e5-small":
        model = AutoModelForSequenceClassification.from_pretrained(E5_DIR, num_labels=num_labels, **extra)
    else:
        config = ARCHITECTURES[arch][1]()
        config.num_labels = num_labels
        model = AutoModelForSequenceClassification.from_config(config, **extra)
    if freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def training_arguments(variant: str, cfg: RunConfig, output_dir: str, steps: int, batch_size: int, use_cpu: bool) -> TrainingArguments:
    # "sequential": the bench has already put the sentences in the order of the variant's sampler (draw_batches)
    common = {"output_dir": output_dir, "max_steps": steps, "per_device_train_batch_size": batch_size, "report_to": "none",
              "save_strategy": "no", "eval_strategy": "no", "logging_strategy": "no", "disable_tqdm": True, "use_cpu": use_cpu, "seed": 0,
              "train_sampling_strategy": "sequential"}
    if variant == "plain":
        return TrainingArguments(**common)
    bf16, fp16 = resolve_precision(cfg.train.precision)
    t = cfg.train
    return TrainingArguments(
        **common, learning_rate=t.learning_rate, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, bf16=bf16, fp16=fp16,
        dataloader_num_workers=t.dataloader_num_workers, **speed_arguments(cfg, use_cpu),
    )


def draw_batches(lengths: list[int], batch_size: int, steps: int, seed: int) -> tuple[list[int], list[int]]:
    """The same steps x batch_size sentence indices twice: in length-grouped batches as training makes them, and shuffled."""
    order = shuffled_length_groups(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    rng = np.random.default_rng(seed)
    grouped = [i for b in rng.choice(len(batches), steps, replace=steps > len(batches)) for i in batches[b]]
    return grouped, [int(i) for i in rng.permutation(grouped)]


def grouped(variant: str, cfg: RunConfig) -> bool:
    return variant != "plain" and cfg.train.group_by_length


def run_once(variant: str, cfg: RunConfig, model: PreTrainedModel, items: list[dict[str, Any]], collator: DataCollatorWithPadding,
             num_topics: int, batch_size: int, use_cpu: bool) -> dict[str, Any]:
    """One pass over `items` (len = steps x batch), all steps timed; the throughput summary."""
    with tempfile.TemporaryDirectory() as tmp:
        args = training_arguments(variant, cfg, tmp, len(items) // batch_size, batch_size, use_cpu)
        trainer = MultiTaskTrainer(model=model, args=args, train_dataset=items, data_collator=collator,
                                   loss_fn_kwargs={"num_topics": num_topics})
        trainer.remove_callback(PrinterCallback)  # the table is the output, not Trainer's end-of-run log line
        throughput = attach_throughput(trainer)
        trainer.train()
        summary = throughput.summary()
    if not use_cpu:  # only the variant being measured stays on the GPU, so that its peak memory is its own
        model.to("cpu")
        del trainer
        gc.collect()
        torch.cuda.empty_cache()
    return summary


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{cpu_name()}, {torch.get_num_threads()} torch thread(s) ({os.cpu_count()} CPUs visible), torch {torch.__version__}"


def bench(arch: str, variants: list[str], steps: int, warmup: int, repeats: int, batch_size: int | None,
          use_cpu: bool) -> dict[str, Any]:
    schema = load_schema()
    configs = {v: variant_config(arch, v) for v in variants}
    base = configs[variants[0]]
    batch_size = batch_size or base.train.batch_size
    for v, c in configs.items():
        if (c.data.context_sentences, c.model.max_length) != (base.data.context_sentences, base.model.max_length):
            raise BenchError(f"variant {v!r} changes the inputs (data.context_sentences, model.max_length); variants must share them")
    arch_config = ARCHITECTURES[arch][1]()
    items, tokenizer, tokenizer_name = encoded_training_split(base, schema, arch_config.vocab_size, getattr(arch_config, "type_vocab_size", 2))
    collator = DataCollatorWithPadding(tokenizer)  # dynamic padding, as in training
    models = {v: build_model(arch, None if v == "plain" else c.model.attention, v != "plain" and c.model.freeze_word_embeddings,
                             schema.num_labels) for v, c in configs.items()}
    lengths = [len(item["input_ids"]) for item in items]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(-1, repeats):  # repeat -1: the untimed warm-up
        in_groups, shuffled = draw_batches(lengths, batch_size, warmup if repeat < 0 else steps, seed=repeat + 1)
        for v in variants:
            sample = [items[i] for i in (in_groups if grouped(v, configs[v]) else shuffled)]
            result = run_once(v, configs[v], models[v], sample, collator, schema.num_topics, batch_size, use_cpu)
            if repeat < 0:
                continue
            runs[v].append(result)
            print(f"[bench-train] repeat {repeat + 1}/{repeats} {v}: {runs[v][-1].get('samples_per_second')} samples/s", file=sys.stderr)
    model = models[variants[0]]
    return {
        "arch": arch, "config": ARCHITECTURES[arch][0], "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(exclude_embeddings=True), "steps": steps, "warmup": warmup,
        "repeats": repeats, "batch_size": batch_size, "max_length": base.model.max_length,
        "context_sentences": base.data.context_sentences, "tokenizer": tokenizer_name, "hardware": hardware(),
        "reference": variants[0],
        "variants": {v: _medians(r, runs[variants[0]]) for v, r in runs.items()},
    }


def _medians(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("samples_per_second", "tokens_per_second", "padding_share", "mfu", "peak_memory_gb", "memory_growth_gb", "model_tflops_per_second")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys if all(r.get(k) is not None for r in runs)}
    out["samples_per_second_runs"] = [r["samples_per_second"] for r in runs]
    # ratio within each repeat (same sentences, same moment on a shared machine), then the median
    out["speedup"] = statistics.median(r["samples_per_second"] / ref["samples_per_second"] for r, ref in zip(runs, reference))
    for k in ("precision", "peak_source", "peak_memory", "device"):
        out[k] = runs[0].get(k)
    return out


def format_table(result: dict[str, Any]) -> str:
    variants, label = result["variants"], result["reference"]
    any_row = variants[label]
    lines = [
        f"architecture: {result['arch']} ({result['parameters'] / 1e6:.1f}M parameters, {result['non_embedding_parameters'] / 1e6:.1f}M "
        f"non-embedding), settings of {result['config']}",
        f"batches: {result['batch_size']} training-split sentences, max_length {result['max_length']}, context {result['context_sentences']}, "
        f"tokenized with {result['tokenizer']}",
        f"hardware: {result['hardware']}; MFU against {any_row.get('peak_source')}",
        f"{result['steps']} timed steps after {result['warmup']} warm-up steps, median of {result['repeats']} interleaved repeats; "
        f"vs {label}: median of the per-repeat ratios of samples/s; tokens/s: non-padding tokens; peak GiB: {any_row.get('peak_memory')}, "
        "+train GiB: its rise during training" + (" (CPU: approximate, freed memory is reused)" if any_row.get("device") == "cpu" else ""),
        "",
        f"| {'variant':<44} | precision | samples/s | tokens/s | padding |    MFU | peak GiB | +train GiB | vs {label:<5} | samples/s runs |",
        f"|{'-' * 46}|-----------|----------:|---------:|--------:|-------:|---------:|-----------:|---------:|----------------|",
    ]
    for name, row in variants.items():
        mfu = f"{row['mfu']:.2%}" if row.get("mfu") is not None else "-"
        peak = f"{row['peak_memory_gb']:.2f}" if row.get("peak_memory_gb") is not None else "-"
        growth = f"{row['memory_growth_gb']:.2f}" if row.get("memory_growth_gb") is not None else "-"
        runs = " ".join(f"{r:.1f}" for r in row["samples_per_second_runs"])
        lines.append(f"| {name:<44} | {row['precision']:<9} | {row['samples_per_second']:9.1f} | {row['tokens_per_second']:8.0f} | "
                     f"{row['padding_share']:7.1%} | {mfu:>6} | {peak:>8} | {growth:>10} | {row['speedup']:7.2f}x | {runs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small", choices=sorted(ARCHITECTURES), help="architecture (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", help="plain, ours, ours:key=value,... (default: plain, ours, ours with "
                        "model.freeze_word_embeddings flipped)")
    parser.add_argument("--steps", type=int, help="timed optimizer steps per run (default: 12 on CPU, 40 on GPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the repeats (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the table gives medians (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, help="per-device batch size (default: the config's train.batch_size)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even where a GPU is visible")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice). On a CPU shared with other "
                        "jobs, 1 thread gives steadier figures: threads that wait for each other stall when one is descheduled")
    parser.add_argument("--json-out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    use_cpu = args.cpu or not torch.cuda.is_available()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.arch == "e5-small" and not (E5_DIR / "config.json").is_file():
            raise BenchError(f"{E5_DIR} is not built; run `make encoder` first, or pick another --arch")
        for name in ("steps", "repeats", "batch_size"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1")
        if args.warmup < 1:
            raise BenchError("--warmup must be >= 1 (the first steps allocate and choose kernels)")
        variants = args.variants or default_variants(args.arch)
        for v in variants:
            if v != "plain" and not (v == "ours" or v.startswith("ours:")):
                raise BenchError(f"unknown variant {v!r}: use plain, ours, or ours:key=value,...")
        steps = args.steps or (12 if use_cpu else 40)
        result = bench(args.arch, variants, steps, args.warmup, args.repeats, args.batch_size, use_cpu)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
