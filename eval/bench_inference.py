"""Tagging throughput on CPU: the plain transformers pipeline (the reference) against the Tagger on torch, ONNX fp32
and ONNX int8, all measured in one run on the same sentences, interleaved chunk by chunk; medians and ratios.

    make bench-inference                                                # tiny random-init BERT (configs/tiny.yaml)
    python eval/bench_inference.py --encoder models/multilingual-e5-small   # the real encoder, random head
    python eval/bench_inference.py --model outputs/e5-small/model --repeats 7    # a fine-tuned model folder

Speed does not depend on the weights, so `--encoder` puts a fresh coopstance head on a base encoder; prediction
agreement is only meaningful for a trained model (`--model`). The ONNX files are exported into a temporary folder
unless the model folder already has them. The sentences are those of the test-split articles, in article order; the
pipeline gets them as one flat list (`pipeline("text-classification", top_k=None, batch_size=32)`), the Tagger as
pre-split articles (`tag_articles`), so neither pays for sentence segmentation.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from coopstance.config import load_config
from coopstance.data import context_pair, group_articles, load_records, load_splits, split_records
from coopstance.inference import Article, Tagger, available_cpus
from coopstance.labels import load_schema
from coopstance.metrics import sigmoid

REFERENCE = "transformers pipeline, batch 32"
CHUNK_SENTENCES = 64  # timing granularity: every system tags one chunk of whole articles before the next chunk


def article_chunks(articles: list[list[str]], size: int) -> list[list[list[str]]]:
    chunks: list[list[list[str]]] = [[]]
    for sentences in articles:
        if sum(map(len, chunks[-1])) >= size:
            chunks.append([])
        chunks[-1].append(sentences)
    return chunks


def tiny_model_dir(texts: list[str], folder: Path) -> Path:
    from coopstance.model import build_tiny_model, train_tiny_tokenizer

    cfg = load_config("configs/tiny.yaml")
    schema = load_schema(cfg.data.labels_file)
    tokenizer = train_tiny_tokenizer(texts, cfg.model.tiny.vocab_size)
    torch.manual_seed(0)
    model = build_tiny_model(cfg.model, schema, tokenizer)
    model.config.max_seq_length = cfg.model.max_length
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def encoder_model_dir(encoder: str, max_length: int, folder: Path) -> Path:
    """A base encoder with a fresh (random) coopstance head: the same shapes and speed as a fine-tuned model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    schema = load_schema()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        encoder, num_labels=schema.num_labels, id2label=schema.id2label, label2id=schema.label2id
    )
    model.config.max_seq_length = max_length
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(folder)
    return folder


def with_onnx(model_dir: Path, folder: Path) -> Path:
    """`model_dir` if it has both ONNX files, else a folder of links to its files with the ONNX files exported into it."""
    from coopstance.onnx_export import INT8_FILE, ONNX_FILE, export_onnx

    if (model_dir / ONNX_FILE).is_file() and (model_dir / INT8_FILE).is_file():
        return model_dir
    if model_dir != folder:
        folder.mkdir(parents=True, exist_ok=True)
        for file in model_dir.iterdir():
            if file.is_file() and file.name not in (ONNX_FILE, INT8_FILE):
                os.symlink(file.resolve(), folder / file.name)
    export_onnx(folder, int8=True, log=lambda message: print(message, file=sys.stderr))
    return folder


def decisions(tagger: Tagger, articles: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Topic probabilities, topic decisions and stance indices for every sentence (untimed)."""
    logits = np.concatenate([tagger.logits(sentences) for sentences in articles])
    probs = sigmoid(logits[:, :tagger.schema.num_topics])
    return probs, probs >= tagger.thresholds, logits[:, tagger.schema.num_topics:].argmax(1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="exported (fine-tuned) model folder")
    source.add_argument("--encoder", help="base encoder folder; a random coopstance head is put on it (speed only)")
    parser.add_argument("--max-length", type=int, default=96, help="max_seq_length for --encoder (configs/e5-small.yaml: 128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-sentences", type=int, default=0, help="use the first N test sentences (0: all; ~300 is enough for e5 on 2 cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    threads = available_cpus()
    torch.set_num_threads(threads)  # the pipeline and the Tagger on the same threads

    schema = load_schema()
    records = load_records(["data/corpus", "seeds"], schema)
    test = split_records(records, load_splits("data/splits.json"))[0]["test"]
    articles = [[r.text for r in rs] for rs in group_articles(test).values()]
    if args.max_sentences:
        kept, total = [], 0
        for sentences in articles:
            if total >= args.max_sentences:
                break
            kept.append(sentences[:args.max_sentences - total])
            total += len(kept[-1])
        articles = kept
    flat = [s for sentences in articles for s in sentences]

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir, label = Path(args.model), args.model
        elif args.encoder:
            model_dir, label = encoder_model_dir(args.encoder, args.max_length, Path(tmp) / "model"), f"{args.encoder} + random head"
        else:
            model_dir, label = tiny_model_dir([r.text for r in records], Path(tmp) / "model"), "tiny random-init BERT (configs/tiny.yaml)"
        model_dir = with_onnx(model_dir, Path(tmp) / "model")

        taggers = {f"Tagger {name}": Tagger(model_dir, backend=backend, device="cpu", batch_size=args.batch_size)
                   for name, backend in (("torch", "torch"), ("ONNX fp32", "onnx"), ("ONNX int8", "onnx-int8"))}
        context, headline = taggers["Tagger torch"].context_sentences, taggers["Tagger torch"].context_headline
        classifier = pipeline("text-classification", model=str(model_dir), top_k=None, device="cpu")
        max_length = taggers["Tagger torch"].max_length
        chunks = article_chunks(articles, CHUNK_SENTENCES)

        def pipeline_run(chunk: list[list[str]]) -> None:
            if context or headline:  # the pipeline gets the same second segment as the Tagger
                inputs = [{"text": s, "text_pair": context_pair(a, i, context, headline)} for a in chunk for i, s in enumerate(a)]
            else:
                inputs = [s for a in chunk for s in a]
            # truncated like the Tagger's inputs, so both do the same work
            classifier(inputs, batch_size=32, truncation=True, max_length=max_length)

        def tagger_run(tagger: Tagger) -> Callable[[list[list[str]]], None]:
            return lambda chunk: sum(1 for _ in tagger.tag_articles(Article(id=str(i), text="", sentences=a) for i, a in enumerate(chunk)))

        runs = {REFERENCE: pipeline_run, **{name: tagger_run(t) for name, t in taggers.items()}}
        for run in runs.values():  # warm-up: first calls allocate and compile kernels
            run(chunks[0])
        # Interleaved chunk by chunk, in rotating order, so that a busy moment on a shared machine hits every row alike.
        rates: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for repeat in range(args.repeats):
            seconds = dict.fromkeys(runs, 0.0)
            for c, chunk in enumerate(chunks):
                shift = (repeat * len(chunks) + c) % len(names)
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    runs[name](chunk)
                    seconds[name] += time.perf_counter() - start
            for name in runs:
                rates[name].append(len(flat) / seconds[name])

        reference_probs, reference_topics, reference_stance = decisions(taggers["Tagger torch"], articles)
        medians = {name: statistics.median(r) for name, r in rates.items()}
        # the ratio within each repeat (same minutes, same load), then the median of those
        ratios = {name: statistics.median(x / ref for x, ref in zip(r, rates[REFERENCE])) for name, r in rates.items()}
        print(f"model: {label}; {len(flat)} test sentences in {len(articles)} articles, max_seq_length "
              f"{taggers['Tagger torch'].max_length}, context {context}{' with the headline' if headline else ''}")
        print(f"hardware: {cpu_name()}, {threads} CPU(s) available ({os.cpu_count()} visible), torch {torch.__version__} "
              f"and ONNX Runtime on {threads} threads; median of {args.repeats} repeats, interleaved by chunks of ~{CHUNK_SENTENCES} sentences\n")
        print(f"| {'system':<32} | sentences/s | vs reference | min-max sent/s | max abs prob diff vs torch | labels as torch |")
        print(f"|{'-' * 34}|------------:|-------------:|---------------:|---------------------------:|----------------:|")
        for name in runs:
            if name in taggers and name != "Tagger torch":
                probs, topics, stance = decisions(taggers[name], articles)
                diff = f"{np.abs(probs - reference_probs).max():.1e}"
                same = f"{((topics == reference_topics).all(1) & (stance == reference_stance)).mean():.1%}"
            else:
                diff = same = "-"
            print(f"| {name:<32} | {medians[name]:11.1f} | {ratios[name]:11.2f}x | "
                  f"{min(rates[name]):6.1f}-{max(rates[name]):<7.1f} | {diff:>26} | {same:>15} |")
        if not args.model:
            print("\n(random weights: probabilities sit near the thresholds, so int8 label agreement here says little; "
                  "tests/test_export.py measures it on a trained model, and --model DIR here)")


if __name__ == "__main__":
    main()
