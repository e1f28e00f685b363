"""`coopstance tag-corpus` throughput: the local engine (all CPUs, and 1 thread) against Ray Data with 1 and 2 actors
of 1 thread (and 1 actor of 2 threads), on one synthetic archive, in one run with the repeats interleaved; medians and
ratios.

    make bench-bulk                                        # 2,000 articles, tiny random-init BERT (configs/tiny.yaml)
    python eval/bench_bulk.py --articles 400 --repeats 3   # smaller
    python eval/bench_bulk.py --model outputs/demo/model   # a real model folder

The archive cycles through the corpus articles (six languages; headline, then the body), with new ids, a date and a
source, in one JSONL file cut into shards of --shard-size articles. Each run tags it into a fresh folder through the
library (`coopstance.bulk`: plan, engine, shard writer), as `coopstance tag-corpus` does.

Two rates per run: "job" counts the whole job from the plan to the last shard written (model load, and for Ray the
start of the actors: what a small job pays); "steady" counts all sentences over the time from the first shard
started to the last one finished, by the taggers' clocks (what a long job gets; the cost model uses it). The local
Ray is started once, before the runs, as a cluster would be.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coopstance.bulk import plan_job, prepare_output, run_local, run_ray, write_shard  # noqa: E402
from coopstance.inference import available_cpus  # noqa: E402


class _NoProgress:
    total = 0

    def update(self, n: int = 1) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass


def tiny_model_dir(folder: Path) -> Path:
    """configs/tiny.yaml with random weights and a tokenizer trained on the corpus: speed does not depend on weights."""
    import torch

    from coopstance.config import load_config
    from coopstance.labels import load_schema
    from coopstance.model import build_tiny_model, train_tiny_tokenizer

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    texts = [json.loads(line)["text"] for f in sorted((REPO / "data" / "corpus").glob("*.jsonl")) for line in f.open(encoding="utf-8")]
    tokenizer = train_tiny_tokenizer(texts, cfg.model.tiny.vocab_size)
    torch.manual_seed(0)
    model = build_tiny_model(cfg.model, load_schema(cfg.data.labels_file), tokenizer)
    model.config.max_seq_length = cfg.model.max_length
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def synthetic_archive(n_articles: int, path: Path) -> int:
    """n_articles made by cycling through the corpus articles; returns the number of corpus articles used."""
    sentences: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for file in sorted((REPO / "data" / "corpus").glob("*.jsonl")):
        for line in file.open(encoding="utf-8"):
            record = json.loads(line)
            sentences[record["article_id"]].append(record)
    corpus = []
    for article_id in sorted(sentences):
        rows = sorted(sentences[article_id], key=lambda r: r["sentence_id"])
        joiner = "" if rows[0]["lang"] in ("ja", "zh") else " "
        corpus.append((article_id, rows[0]["lang"], rows[0]["text"] + "\n" + joiner.join(r["text"] for r in rows[1:])))
    with path.open("w", encoding="utf-8") as out:
        for i in range(n_articles):
            article_id, lang, text = corpus[i % len(corpus)]
            date = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}"
            record = {"id": f"{article_id}-{i}", "text": text, "lang": lang, "date": date, "source": f"outlet-{i % 5}"}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(corpus)


def one_run(config: dict[str, Any], model: Path, archive: Path, folder: Path, shard_size: int) -> dict[str, float]:
    job = plan_job([str(archive)], str(model), "torch", 32, shard_size, 100_000, None)
    assert prepare_output(folder, job, overwrite=False) is None
    pending = {s["name"] for s in job.shards}
    finished: list[dict[str, Any]] = []

    def done(shard: dict[str, Any]) -> None:
        write_shard(folder, shard)
        finished.append(shard)

    start = time.perf_counter()
    if config["engine"] == "local":
        run_local(job, pending, done, _NoProgress(), config["threads"], "cpu", lambda: None)
    else:
        run_ray(job, pending, done, _NoProgress(), config["actors"], config["threads"], 0)
    seconds = time.perf_counter() - start
    articles, sentences = sum(s["n_articles"] for s in finished), sum(s["n_sentences"] for s in finished)
    # The taggers' own clocks: from the first shard started to the last finished, so model loads and actor starts are out.
    steady_seconds = max(s["finished_at"] for s in finished) - min(s["started_at"] for s in finished)
    return {"articles_per_s": articles / seconds, "sentences_per_s": sentences / seconds, "steady_sentences_per_s": sentences / steady_seconds,
            "seconds": seconds, "sentences": sentences}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="model folder (default: the tiny random-init model, built in a temporary folder)")
    parser.add_argument("--no-ray", action="store_true", help="the local engine only")
    args = parser.parse_args()

    import ray
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cpus = available_cpus()
    configs = [{"name": f"local, {cpus} threads", "engine": "local", "actors": None, "threads": cpus},
               {"name": "local, 1 thread", "engine": "local", "actors": None, "threads": 1}]
    if not args.no_ray:
        configs += [
            {"name": "ray, 1 actor x 1 thread", "engine": "ray", "actors": 1, "threads": 1},
            {"name": "ray, 2 actors x 1 thread", "engine": "ray", "actors": 2, "threads": 1},
            {"name": "ray, 1 actor x 2 threads", "engine": "ray", "actors": 1, "threads": 2},
        ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else tiny_model_dir(root / "model")
        archive = root / "archive.jsonl"
        n_corpus = synthetic_archive(args.articles, archive)
        if not args.no_ray:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        results: dict[str, list[dict[str, float]]] = defaultdict(list)
        for repeat in range(args.repeats):
            for config in configs:
                result = one_run(config, model, archive, root / f"out-{repeat}-{config['name'].replace(' ', '')}", args.shard_size)
                results[config["name"]].append(result)
                print(f"  run {repeat + 1}/{args.repeats} {config['name']:<28} {result['seconds']:6.1f} s", file=sys.stderr, flush=True)
        if not args.no_ray:
            ray.shutdown()

    sentences = results[configs[0]["name"]][0]["sentences"]
    print(f"\n{args.articles} articles ({n_corpus} corpus articles cycled), {sentences} sentences, shards of {args.shard_size}; "
          f"model: {args.model or 'tiny random-init BERT (configs/tiny.yaml)'}; median of {args.repeats} runs, interleaved")
    print(f"hardware: {platform.processor() or platform.machine()}, {cpus} CPUs available; torch {torch.__version__}, ray {ray.__version__}\n")
    header = f"| {'engine':<28} | job articles/s | job sentences/s | steady sentences/s | steady vs local 1 thread | {'runs (s)':<14} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    median = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    local = median["local, 1 thread"]["steady_sentences_per_s"]  # same threads: the engine alone
    for config in configs:
        m = median[config["name"]]
        runs = ", ".join(f"{r['seconds']:.0f}" for r in results[config["name"]])
        print(f"| {config['name']:<28} | {m['articles_per_s']:14.1f} | {m['sentences_per_s']:15.0f} | {m['steady_sentences_per_s']:18.0f} | "
              f"{m['steady_sentences_per_s'] / local:23.2f}x | {runs:<14} |")
    if not args.no_ray:
        one, two = median["ray, 1 actor x 1 thread"], median["ray, 2 actors x 1 thread"]
        print(f"\nRay scaling 1 -> 2 actors (1 thread each): {two['steady_sentences_per_s'] / one['steady_sentences_per_s']:.2f}x steady, "
              f"{two['sentences_per_s'] / one['sentences_per_s']:.2f}x job")
        print(f"cost model: sentences/s per core = the steady 1-thread rate, here {local:.0f} (local) and {one['steady_sentences_per_s']:.0f} "
              "(one Ray actor); x the cores of the cluster, with one 1-thread actor per core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
