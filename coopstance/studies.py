"""The studies behind the README's claims, each a series of training runs that writes one table to `outputs/studies/`:

    cross_lingual_study   for each language: train without it, evaluate on its test articles, beside the model
                          trained on all languages (what a user with a new language can expect)
    context_study         data.context_sentences 0, 1, 2 with the same seed and budget: scores, stance on implicit
                          references, training time and tagging speed
    cv_study              k-fold cross-validation grouped by article: mean and standard deviation of the headline
                          figures (how much of a difference between two runs is noise)

They run with any config and `key=value` overrides (the budget: epochs, max length). Runs go to
`outputs/studies/runs/<study>-<config>/<run>/`, each with its evaluation report; a finished run with the same config
is reused, so a study that was stopped continues where it was. Tables: `outputs/studies/<study>-<config>.md` and `.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from coopstance.config import RunConfig, load_config, resolve_path
from coopstance.data import Record, group_articles, load_records, write_splits
from coopstance.evaluation import Evaluation, run_evaluation
from coopstance.labels import load_schema
from coopstance.metrics import evaluate_predictions
from coopstance.utils import atomic_write_json, atomic_write_text

STUDIES_ROOT = Path("outputs/studies")
FIGURE_NAMES = {
    "topic_macro_f1": "topic macro-F1", "topic_micro_f1": "topic micro-F1", "topic_macro_pr_auc": "topic PR-AUC",
    "article_topic_macro_f1": "article topic macro-F1", "stance_macro_f1": "stance macro-F1", "stance_accuracy": "stance accuracy",
}
FIGURES = tuple(FIGURE_NAMES)


@dataclasses.dataclass
class Study:
    """Where one study's runs and table go, and the config every run starts from."""

    name: str
    config: str
    overrides: list[str]
    root: Path = STUDIES_ROOT
    bootstrap_samples: int = 1000

    @property
    def label(self) -> str:
        return f"{self.name}-{Path(self.config).stem}"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs" / self.label

    def run_config(self, run_name: str, *extra: str) -> RunConfig:
        return load_config(self.config, [*self.overrides, *extra, f"train.output_root={self.runs_dir}", f"train.run_name={run_name}",
                                         "train.overwrite=false"])


def _comparable(cfg_yaml: dict[str, Any]) -> dict[str, Any]:
    cfg_yaml.get("train", {}).pop("overwrite", None)
    return cfg_yaml


def _same_config(saved: dict[str, Any], wanted: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether a finished run's saved config is the wanted one. Keys the saved config lacks (it was written by an older
    coopstance, before they existed) are left out of the comparison and returned, so the reuse can say so."""
    saved, wanted = _comparable(saved), _comparable(wanted)
    newer = [f"{section}.{key}" for section, values in wanted.items() if isinstance(values, dict)
             for key in values if key not in (saved.get(section) or {})]
    trimmed = {section: {k: v for k, v in values.items() if f"{section}.{k}" not in newer} if isinstance(values, dict) else values
               for section, values in wanted.items()}
    return saved == trimmed, newer


def train_or_reuse(cfg: RunConfig) -> Path:
    """The exported model of `cfg`: a finished run with the same config is reused; otherwise it is trained (an
    unfinished one resumed; one with another config replaced)."""
    from coopstance.training import RunFolderError, train

    saved = cfg.run_dir / "config.yaml"
    same, newer = _same_config(yaml.safe_load(saved.read_text(encoding="utf-8")), yaml.safe_load(cfg.to_yaml())) if saved.is_file() else (False, [])
    if same and (cfg.run_dir / "metrics.json").is_file() and (cfg.run_dir / "model" / "config.json").is_file():
        note = f" (made before {', '.join(newer)} existed)" if newer else ""
        print(f"[studies] reusing the finished run {cfg.run_dir}{note}")
        return cfg.run_dir / "model"
    try:
        train(cfg, argv=["coopstance.studies", cfg.train.run_name])
    except RunFolderError:
        print(f"[studies] {cfg.run_dir} holds a run with another config: replacing it")
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, overwrite=True)), argv=["coopstance.studies", cfg.train.run_name])
    return cfg.run_dir / "model"


def evaluate_and_report(model_dir: Path, study: Study, name: str, **kwargs: Any) -> Evaluation:
    """Evaluate and write the run's report folder `<run>/eval/<name>/` (compare runs with eval/compare.py)."""
    from coopstance.report import write_report

    evaluation = run_evaluation(model_dir, bootstrap_samples=study.bootstrap_samples, **kwargs)
    write_report(evaluation, model_dir.parent / "eval" / name)
    return evaluation


def fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] + ["---:"] * (len(header) - 1), *rows])


def write_study(study: Study, title: str, intro: str, markdown_table: str, payload: dict[str, Any]) -> Path:
    cfg = study.run_config("x")
    budget = f"{cfg.train.max_steps} optimizer steps" if cfg.train.max_steps > 0 else f"{cfg.train.epochs:g} epochs"
    setting = (f"Config `{study.config}` with `{' '.join(study.overrides) or '(no overrides)'}`: encoder `{cfg.model.name_or_path}`, "
               f"{budget}, max length {cfg.model.max_length}, seed {cfg.train.seed}. Intervals: 95% article bootstrap "
               f"({study.bootstrap_samples} resamples). Runs and their reports: `{study.runs_dir}/`.")
    text = f"# {title}\n\n{intro}\n\n{setting}\n\n{markdown_table}\n"
    path = study.root / f"{study.label}.md"
    atomic_write_text(path, text)
    atomic_write_json(study.root / f"{study.label}.json", {"study": study.name, "config": study.config, "overrides": study.overrides,
                                                           **payload})
    print(text)
    return path


def _article_language(sentences: list[Record]) -> str:
    langs = [r.lang for r in sentences]
    return max(set(langs), key=langs.count)


# ---------------------------------------------------------------------------------------------------------------
# Cross-lingual transfer.


def cross_lingual_study(study: Study, languages: list[str] | None = None) -> Path:
    base = study.run_config("all")
    schema = load_schema(resolve_path(base.data.labels_file))
    records = load_records(base.data.sources, schema)
    article_lang = {a: _article_language(rs) for a, rs in group_articles(records).items()}
    langs = languages or sorted(set(article_lang.values()))
    data_dir = study.runs_dir / "data"
    all_model = train_or_reuse(base)
    rows, payload = [], {}
    for lang in langs:
        without, only = data_dir / f"without-{lang}.jsonl", data_dir / f"only-{lang}.jsonl"
        atomic_write_text(without, "".join(_json_line(r) for r in records if article_lang[r.article_id] != lang))
        atomic_write_text(only, "".join(_json_line(r) for r in records if article_lang[r.article_id] == lang))
        zero_shot = train_or_reuse(study.run_config(f"without-{lang}", f"data.sources=[{without}]"))
        # the same sentences for both models: this language's test articles, by the model's own split file
        seen = evaluate_and_report(all_model, study, f"only-{lang}", split="test", sources=[str(only)], splits_file=base.data.splits_file)
        unseen = evaluate_and_report(zero_shot, study, f"only-{lang}", split="test", sources=[str(only)], splits_file=base.data.splits_file)
        a, z = seen.metrics["model_scores"], unseen.metrics["model_scores"]
        zb = unseen.metrics.get("baseline_scores") or {}
        rows.append([lang, str(a["n_articles"]), str(a["n_sentences"]),
                     fmt(a["topic_macro_f1"], a["ci95"]["topic_macro_f1"]), fmt(z["topic_macro_f1"], z["ci95"]["topic_macro_f1"]),
                     f"{z['topic_macro_f1'] - a['topic_macro_f1']:+.3f}", fmt(zb.get("topic_macro_f1")),
                     fmt(a["stance_macro_f1"], a["ci95"]["stance_macro_f1"]), fmt(z["stance_macro_f1"], z["ci95"]["stance_macro_f1"]),
                     f"{z['stance_macro_f1'] - a['stance_macro_f1']:+.3f}", fmt(zb.get("stance_macro_f1"))])
        payload[lang] = {"all_languages": _headline(a), "without_language": _headline(z), "baseline_without_language": _headline(zb)}
    deltas = {k: statistics.mean(p["without_language"][k] - p["all_languages"][k] for p in payload.values())
              for k in ("topic_macro_f1", "stance_macro_f1")}
    rows.append(["**mean**", "", "", "", "", f"{deltas['topic_macro_f1']:+.3f}", "", "", "", f"{deltas['stance_macro_f1']:+.3f}", ""])
    header = ["language", "test articles", "sentences", "topic F1: all languages", "without it", "Δ", "baseline without it",
              "stance F1: all languages", "without it", "Δ", "baseline without it"]
    intro = ("For each language: a model trained on the other languages only, scored on this language's test articles, beside the "
             "model trained on all languages on the same sentences (macro-F1, tuned thresholds). Δ: without minus with. "
             "The baseline is the TF-IDF model trained on the same data as the model without the language.")
    return write_study(study, "Cross-lingual transfer: train without a language, test on it", intro, table(header, rows),
                       {"languages": payload, "mean_delta": deltas})


def _json_line(r: Record) -> str:
    return json.dumps(r.to_json(), ensure_ascii=False) + "\n"


def _headline(scores: dict[str, Any]) -> dict[str, Any]:
    if not scores:
        return {}
    return {**{k: scores.get(k) for k in FIGURES}, "ci95": {k: (scores.get("ci95") or {}).get(k) for k in FIGURES}}


# ---------------------------------------------------------------------------------------------------------------
# Context ablation.


def tagging_speed(model_dir: Path, records: list[Record], repeats: int = 3) -> float:
    """Sentences per second of `Tagger` over the records' articles: the median of `repeats` timed passes."""
    from coopstance.inference import Article, Tagger

    tagger = Tagger(model_dir)
    articles = [Article(id=a, text="", lang=rs[0].lang, sentences=[r.text for r in rs]) for a, rs in group_articles(records).items()]
    list(tagger.tag_articles(articles[:2]))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _result in tagger.tag_articles(articles):
            pass
        times.append(time.perf_counter() - start)
    return len(records) / statistics.median(times)


def context_study(study: Study, contexts: tuple[int, ...] = (0, 1, 2), speed_repeats: int = 3) -> Path:
    rows, payload = [], {}
    for n in contexts:
        cfg = study.run_config(f"ctx{n}", f"data.context_sentences={n}")
        model_dir = train_or_reuse(cfg)
        evaluation = evaluate_and_report(model_dir, study, "test", split="test")
        scores = evaluation.metrics["model_scores"]
        implicit = [i for i, r in enumerate(evaluation.records) if r.extra.get("hard_case") == "implicit"]
        implicit_scores: dict[str, Any] = {}
        if implicit:
            idx = np.array(implicit)
            implicit_scores = evaluate_predictions(
                evaluation.topic_true[idx], evaluation.model.topic_pred[idx], evaluation.stance_true[idx], evaluation.model.stance_pred[idx],
                [evaluation.records[i].article_id for i in implicit], evaluation.info.schema, study.bootstrap_samples)
        metrics_file = cfg.run_dir / "metrics.json"
        train_s = yaml.safe_load(metrics_file.read_text(encoding="utf-8")).get("runtime_s")
        speed = tagging_speed(model_dir, evaluation.records, speed_repeats)
        rows.append([str(n), fmt(scores["topic_macro_f1"], scores["ci95"]["topic_macro_f1"]),
                     fmt(scores["stance_macro_f1"], scores["ci95"]["stance_macro_f1"]),
                     str(len(implicit)), fmt(implicit_scores.get("stance_accuracy"), (implicit_scores.get("ci95") or {}).get("stance_accuracy")),
                     f"{train_s:.0f}" if train_s is not None else "–", f"{speed:.1f}"])
        payload[f"context_{n}"] = {**_headline(scores), "implicit_n": len(implicit),
                                   "implicit_stance_accuracy": implicit_scores.get("stance_accuracy"),
                                   "implicit_stance_accuracy_ci95": (implicit_scores.get("ci95") or {}).get("stance_accuracy"),
                                   "train_runtime_s": train_s, "tagging_sentences_per_s": round(speed, 2)}
    header = ["context sentences", "topic macro-F1", "stance macro-F1", "implicit refs", "stance accuracy on implicit refs",
              "training time (s)", "tagging (sentences/s)"]
    intro = ("`data.context_sentences` N feeds the N sentences before and after each sentence as a second segment. Same seed, "
             "budget and max length for every N; scored on the test articles. Implicit references: sentences the corpus marks "
             "`hard_case: implicit` (stance or topic clear only from context). Training time: the whole run (train, dev/test "
             "scoring, export); tagging speed: `Tagger` on the test articles, median of "
             f"{speed_repeats} passes.")
    return write_study(study, "Does context help? data.context_sentences 0, 1, 2", intro, table(header, rows), {"contexts": payload})


# ---------------------------------------------------------------------------------------------------------------
# Cross-validation grouped by article.


def article_folds(records: list[Record], folds: int, seed: int, dev_share: float = 0.15) -> list[dict[str, list[str]]]:
    """k splits of the articles: fold i is test; of the other articles, a `dev_share` per language (at least one) is dev,
    the rest train. Folds are stratified by article language (scikit-learn's StratifiedGroupKFold over sentences,
    grouped by article), so each fold holds every language."""
    from sklearn.model_selection import StratifiedGroupKFold

    articles = group_articles(records)
    ids = list(articles)
    langs = [_article_language(articles[a]) for a in ids]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _, test_idx in splitter.split(np.zeros(len(ids)), langs, groups=ids):
        test = {ids[i] for i in test_idx}
        dev: set[str] = set()
        for lang in sorted(set(langs)):
            rest = sorted(a for a, la in zip(ids, langs) if la == lang and a not in test)
            if len(rest) >= 2:
                dev |= set(rng.permutation(rest)[:max(1, round(len(rest) * dev_share))].tolist())
        out.append({"train": sorted(set(ids) - test - dev), "dev": sorted(dev), "test": sorted(test)})
    return out


def cv_study(study: Study, folds: int = 5) -> Path:
    base = study.run_config("fold-1")
    schema = load_schema(resolve_path(base.data.labels_file))
    records = load_records(base.data.sources, schema)
    rows, per_fold = [], []
    for k, split in enumerate(article_folds(records, folds, base.train.seed), 1):
        splits_file = study.runs_dir / "splits" / f"fold-{k}.json"
        write_splits(split, splits_file, f"cross-validation fold {k} of {folds} (coopstance.studies.article_folds, seed {base.train.seed})")
        model_dir = train_or_reuse(study.run_config(f"fold-{k}", f"data.splits_file={splits_file}"))
        evaluation = evaluate_and_report(model_dir, study, "test", split="test")
        model, baseline = evaluation.metrics["model_scores"], evaluation.metrics.get("baseline_scores") or {}
        per_fold.append({"model": _headline(model), "baseline": _headline(baseline), "n_articles": model["n_articles"],
                         "n_sentences": model["n_sentences"]})
        rows.append([str(k), str(model["n_articles"]), str(model["n_sentences"])]
                    + [fmt(model[f]) + (f" ({fmt(baseline.get(f))})" if baseline else "") for f in FIGURES])
    summary: dict[str, Any] = {}
    for system in ("model", "baseline"):
        values = {f: [p[system][f] for p in per_fold if p[system] and p[system].get(f) is not None] for f in FIGURES}
        summary[system] = {f: {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0} for f, v in values.items() if v}
    rows.append(["**mean ± sd**", "", ""] + [
        (f"{summary['model'][f]['mean']:.3f} ± {summary['model'][f]['sd']:.3f}" if f in summary["model"] else "–")
        + (f" ({summary['baseline'][f]['mean']:.3f} ± {summary['baseline'][f]['sd']:.3f})" if f in summary.get("baseline", {}) else "")
        for f in FIGURES])
    header = ["fold", "test articles", "sentences", *FIGURE_NAMES.values()]
    n_articles = len(group_articles(records))
    intro = (f"{folds}-fold cross-validation over all {n_articles} articles, grouped by article and stratified by language: each "
             "fold is the test set once; of the rest, 15% of the articles per language are dev (epoch choice and thresholds), "
             "the others train. Model figures, the TF-IDF baseline in brackets. The standard deviation across folds is the "
             "scale of a difference between two runs that is noise (it also includes the change of test articles).")
    return write_study(study, f"{folds}-fold cross-validation grouped by article", intro, table(header, rows),
                       {"folds": per_fold, "summary": summary})


# ---------------------------------------------------------------------------------------------------------------
# Command lines (eval/xling.py, eval/ablate_context.py, eval/cv.py).


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/e5-small.yaml", help="training config of every run (default: %(default)s)")
    parser.add_argument("--out", default=str(STUDIES_ROOT), help="folder for the table and the runs (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="article bootstrap resamples for the intervals (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run: the budget, e.g. train.epochs=2 model.max_length=64")


def study_from_args(name: str, args: argparse.Namespace) -> Study:
    return Study(name, args.config, list(args.overrides), Path(args.out), args.bootstrap)


def run_study_command(run: Callable[[], Path]) -> int:
    """Run a study; bad input (config, data, missing encoder) is one line on stderr and exit code 2."""
    from coopstance.config import ConfigError
    from coopstance.data import DataError
    from coopstance.evaluation import EvaluationError
    from coopstance.model import ModelUnavailableError

    try:
        path = run()
    except (ConfigError, DataError, EvaluationError, ModelUnavailableError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[studies] table written to {path}")
    return 0
