"""Tagger throughput: sentences per second on this machine, median of several runs, batch sizes side by side.

    make bench-inference                          # tiny random-init model, CPU
    python eval/bench_inference.py --model outputs/mbert/model --device cuda --repeats 7

Without --model it builds the tiny BERT of configs/tiny.yaml (random weights: speed does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from coopstance.config import load_config
from coopstance.data import group_articles, load_records
from coopstance.inference import Tagger
from coopstance.labels import load_schema
from coopstance.model import build_tiny_model, train_tiny_tokenizer


def tiny_model_dir(texts: list[str], folder: Path) -> Path:
    cfg = load_config("configs/tiny.yaml")
    schema = load_schema(cfg.data.labels_file)
    tokenizer = train_tiny_tokenizer(texts, cfg.model.tiny.vocab_size)
    torch.manual_seed(0)
    build_tiny_model(cfg.model, schema, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="exported model folder (default: a tiny random-init BERT)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    records = load_records(["data/corpus"], load_schema())
    articles = [[r.text for r in rs] for rs in group_articles(records).values()][:40]
    n = sum(len(a) for a in articles)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else tiny_model_dir([r.text for r in records], Path(tmp))
        print(f"model: {args.model or 'tiny random-init BERT'}; device {args.device}; {n} sentences in {len(articles)} articles; "
              f"torch threads {torch.get_num_threads()}")
        medians = {}
        for batch_size in args.batch_sizes:
            tagger = Tagger(model_dir, device=args.device, batch_size=batch_size)
            tagger.tag_sentences(articles[0])  # warm-up
            rates = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for sentences in articles:
                    tagger.tag_sentences(sentences)
                rates.append(n / (time.perf_counter() - start))
            medians[batch_size] = statistics.median(rates)
            print(f"batch {batch_size:>3}: median {medians[batch_size]:8.1f} sentences/s "
                  f"(min {min(rates):.1f}, max {max(rates):.1f}, {args.repeats} runs)")
        base = args.batch_sizes[0]
        for batch_size in args.batch_sizes[1:]:
            print(f"batch {batch_size} vs {base}: {medians[batch_size] / medians[base]:.2f}x (same run)")


if __name__ == "__main__":
    main()
