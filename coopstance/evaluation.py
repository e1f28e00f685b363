"""Score an exported model on held-out articles, with article-bootstrap intervals and a baseline beside it.

    evaluation = run_evaluation("outputs/mbert/model", split="test")                      # the model's own test articles
    evaluation = run_evaluation("outputs/mbert/model", split="all", sources=["mine.jsonl"])  # someone else's data

The baseline is always trained on the data the *model* was trained on (the sources and split file of its
training_config.yaml), never on the evaluated data, so that both systems face the evaluated data under the same
conditions. Evaluated articles that the model saw in training (the same article id from another file) stop the
run unless `allow_overlap`; the model's own train or dev articles, when asked for, are scored with a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from coopstance.config import DataArgs, resolve_path
from coopstance.data import (
    DataError,
    Record,
    group_articles,
    label_matrix,
    load_records,
    load_splits,
    normalize_text,
    source_files,
    split_records,
)
from coopstance.labels import LabelSchema, load_schema
from coopstance.metrics import DEFAULT_THRESHOLD, evaluate_predictions, evaluate_probabilities, headline_scores

BASELINE_NAME = "char 2-4-gram TF-IDF + logistic regression (trained on the model's training split, thresholds tuned on its dev split)"
MAX_LISTED_OVERLAPS = 10


class EvaluationError(ValueError):
    """The model folder or the evaluation data cannot be evaluated as asked; the message says why and what to do."""


@dataclass
class ModelInfo:
    """What the exported folder says about the model: its labels and thresholds (config.json), and the data and
    settings it was trained with (training_config.yaml, absent from folders not exported by coopstance)."""

    model_dir: Path
    schema: LabelSchema
    thresholds: np.ndarray
    training: DataArgs | None
    training_seed: int
    base_model: str | None
    warnings: list[str] = field(default_factory=list)


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Read and check the label metadata of an exported model folder; refuse a folder without it."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{model_dir}: no exported model here (config.json missing). Train one with `make train` (or `make demo`), "
            "then pass <run folder>/model."
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    try:
        schema = LabelSchema.from_id2label(id2label) if id2label else None
    except ValueError:
        schema = None
    if schema is None or not schema.topics:
        names = list(id2label.values())[:4]
        raise EvaluationError(
            f"{config_file}: no coopstance label metadata (id2label is {names or 'missing'}{' ...' if len(id2label) > 4 else ''}). "
            "Evaluation needs the label names 'topic/<id>' and 'stance/<id>' in id2label, which `make train` writes when it "
            "exports <run>/model. A plain encoder (such as models/multilingual-e5-small) has to be fine-tuned first: "
            "make train ARGS=\"model.name_or_path=<that folder>\"."
        )
    warnings = []
    saved_thresholds = config.get("topic_thresholds") or {}
    if not saved_thresholds:
        warnings.append(f"{config_file} has no topic_thresholds (tuned on dev at export); every topic uses {DEFAULT_THRESHOLD}.")
    thresholds = np.array([float(saved_thresholds.get(t, DEFAULT_THRESHOLD)) for t in schema.topics])

    training, seed, base_model = None, 0, None
    training_file = model_dir / "training_config.yaml"
    if training_file.is_file():
        saved = yaml.safe_load(training_file.read_text(encoding="utf-8")) or {}
        try:
            training = DataArgs(**saved.get("data", {}))
        except (TypeError, ValueError) as err:
            warnings.append(f"{training_file}: unreadable data section ({err}); the model's training data is unknown.")
        seed = int(saved.get("train", {}).get("seed", 0))
        base_model = saved.get("model", {}).get("name_or_path")
    else:
        warnings.append(f"{training_file} is missing, so the data the model was trained on is unknown: no baseline, no leakage check.")
    if training is not None:  # label definitions for the report, where the label file still matches the model
        try:
            defined = load_schema(resolve_path(training.labels_file))
            if defined.topics == schema.topics and defined.stances == schema.stances:
                schema = defined
        except (FileNotFoundError, ValueError):
            pass
    return ModelInfo(model_dir, schema, thresholds, training, seed, base_model, warnings)


def _file_of(where: str) -> str:
    """The file part of a record's 'file:line' location, resolved, so that records of one file compare equal."""
    path = where.rsplit(":", 1)[0]
    return str(Path(path).resolve()) if not path.startswith("hub:") else path


def check_not_empty(sources: list[str]) -> None:
    """An empty evaluation file is a mistake worth its own message (load_records would only say 'no records')."""
    for source in sources:
        if source.startswith("hub:"):
            continue
        for file in source_files(source):
            if not file.read_text(encoding="utf-8", errors="replace").strip():
                raise DataError(
                    f"{file}: the file is empty. An evaluation file holds one annotated sentence per line (JSONL) or row "
                    "(CSV/Parquet) with article_id, sentence_id, lang, text, topics, stance (README, 'Data'); fill it or leave it out."
                )


def load_training_splits(info: ModelInfo) -> tuple[dict[str, list[Record]] | None, str | None]:
    """The model's own train/dev/test records (from training_config.yaml), or None and the reason they are unavailable."""
    if info.training is None:
        return None, "the model folder has no readable training_config.yaml, so the data it was trained on is unknown"
    try:
        records = load_records(info.training.sources, info.schema)
        splits, _ = split_records(records, load_splits(info.training.splits_file))
    except (DataError, FileNotFoundError) as err:
        return None, f"the model's training data ({info.training.sources}, {info.training.splits_file}) could not be loaded here: {err}"
    if not splits["train"] or not splits["dev"]:
        return None, f"the model's training data has an empty {'train' if not splits['train'] else 'dev'} split"
    return splits, None


def overlap_warnings(target: list[Record], training: dict[str, list[Record]], allow_overlap: bool) -> list[str]:
    """Evaluated articles that the model trained or tuned on.

    The same article from the same file is the model's own data, evaluated on purpose (`--split train|dev|all`): a
    warning. The same article id from another file is leakage, or a clash of ids: an error unless `allow_overlap`.
    Sentences of another file whose text occurs in the training split are reported as a warning."""
    seen: dict[str, tuple[str, Record]] = {}
    for split in ("train", "dev"):
        for r in training[split]:
            seen.setdefault(r.article_id, (split, r))
    own: dict[str, set[str]] = {"train": set(), "dev": set()}
    leaked: list[str] = []
    for article_id, sentences in group_articles(target).items():
        if article_id not in seen:
            continue
        split, first = seen[article_id]
        if _file_of(sentences[0].where) == _file_of(first.where):
            own[split].add(article_id)
        else:
            leaked.append(f"{sentences[0].where}: article '{article_id}' is also in the model's {split} split ({first.where})")
    warnings = []
    n_articles = len({r.article_id for r in target})
    for split, ids in own.items():
        if ids:
            why = "trained on" if split == "train" else "used to pick the epoch and tune the thresholds"
            warnings.append(f"{len(ids)} of the {n_articles} evaluated articles are in the model's {split} split, which it was {why}: "
                            "their scores are optimistic, not an estimate for new text.")
    if leaked:
        more = len(leaked) - MAX_LISTED_OVERLAPS
        listed = "\n  ".join(leaked[:MAX_LISTED_OVERLAPS]) + (f"\n  ... and {more} more" if more > 0 else "")
        message = (f"{len(leaked)} evaluated article(s) have the id of an article the model was trained or tuned on:\n  {listed}\n"
                   "Scores on them would not be held-out. Remove these articles, give them new ids if they are different "
                   "articles, or pass --allow-overlap to score them anyway (the report will say so).")
        if not allow_overlap:
            raise EvaluationError(message)
        warnings.append(message.replace("\n  ", "; ").replace("\n", " "))
    train_texts = {normalize_text(r.text): r.where for r in training["train"]}
    train_texts.pop("", None)  # a sentence without letters or digits matches nothing
    copied = [(r.where, train_texts[key]) for r in target
              if (key := normalize_text(r.text)) in train_texts and _file_of(r.where) != _file_of(train_texts[key])]
    if copied:
        warnings.append(f"{len(copied)} evaluated sentence(s) have the same text as a training sentence (e.g. {copied[0][0]} = "
                        f"{copied[0][1]}): the model has seen them; remove them for a held-out score.")
    return warnings


@dataclass
class SystemOutput:
    """One system's predictions, row-aligned with the evaluated records."""

    topic_probs: np.ndarray  # [n, topics]
    topic_pred: np.ndarray  # [n, topics] bool, at the system's thresholds
    stance_probs: np.ndarray  # [n, stances]
    stance_pred: np.ndarray  # [n] stance index
    thresholds: np.ndarray


def predict_with_model(model_dir: Path, records: list[Record], thresholds: np.ndarray, device: str | None = None,
                       backend: str = "torch") -> SystemOutput:
    """The tagger users run, on the evaluated articles as pre-split sentences (context from each article, in reading order)."""
    from coopstance.inference import Article, Tagger

    tagger = Tagger(model_dir, device=device, backend=backend)
    articles = group_articles(records)
    row = {(r.article_id, r.sentence_id): i for i, r in enumerate(records)}
    topic_probs = np.zeros((len(records), len(thresholds)))
    topic_pred = np.zeros((len(records), len(thresholds)), dtype=bool)
    stance_probs = np.zeros((len(records), tagger.schema.num_stances))
    stance_pred = np.zeros(len(records), dtype=int)
    inputs = (Article(id=a, text="", lang=rs[0].lang, sentences=[r.text for r in rs]) for a, rs in articles.items())
    for result in tagger.tag_articles(inputs):
        for r, tags in zip(articles[result.article.id], result.sentences):
            i = row[(r.article_id, r.sentence_id)]
            topic_probs[i] = [tags.topic_scores[t] for t in tagger.schema.topics]
            topic_pred[i] = [t in tags.topics for t in tagger.schema.topics]
            stance_probs[i] = [tags.stance_scores[s] for s in tagger.schema.stances]
            stance_pred[i] = tagger.schema.stances.index(tags.stance)
    return SystemOutput(topic_probs, topic_pred, stance_probs, stance_pred, thresholds)


def slice_scores(
    records: list[Record], topic_true: np.ndarray, topic_pred: np.ndarray, stance_true: np.ndarray, stance_pred: np.ndarray,
    num_stances: int,
) -> dict[str, dict[str, float]]:
    """Scores per language, and on the hard cases: how often a topic is predicted where gold has none of it
    (topic words in another sense), and stance accuracy (off-topic China, implicit references)."""
    from coopstance.corpus import HARD_CASE_KINDS

    slices: dict[str, dict[str, float]] = {}
    for lang in sorted({r.lang for r in records}):
        idx = np.array([i for i, r in enumerate(records) if r.lang == lang])
        scores = headline_scores(topic_true[idx], topic_pred[idx], stance_true[idx], stance_pred[idx], num_stances)
        slices[f"lang/{lang}"] = {"n": len(idx), **{k: round(scores[k], 4) for k in ("topic_macro_f1", "stance_macro_f1")}}
    for kind in HARD_CASE_KINDS:
        idx = np.array([i for i, r in enumerate(records) if r.extra.get("hard_case") == kind])
        if len(idx):
            spurious = (topic_pred[idx] & ~topic_true[idx]).any(axis=1).mean()
            slices[f"hard_case/{kind}"] = {
                "n": len(idx),
                "spurious_topic_rate": round(float(spurious), 4),
                "stance_accuracy": round(float((stance_true[idx] == stance_pred[idx]).mean()), 4),
            }
    return slices


def language_scores(records: list[Record], topic_true: np.ndarray, output: SystemOutput, stance_true: np.ndarray,
                    schema: LabelSchema, bootstrap_samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Headline figures per language, each with its own article-bootstrap interval."""
    out = {}
    for lang in sorted({r.lang for r in records}):
        idx = np.array([i for i, r in enumerate(records) if r.lang == lang])
        report = evaluate_predictions(topic_true[idx], output.topic_pred[idx], stance_true[idx], output.stance_pred[idx],
                                      [records[i].article_id for i in idx], schema, bootstrap_samples, seed)
        out[lang] = {k: report[k] for k in ("n_sentences", "n_articles", "topic_macro_f1", "topic_micro_f1", "stance_macro_f1",
                                            "stance_accuracy", "ci95")}
    return out


def format_slices(model: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]] | None) -> str:
    lines = [f"{'slice':<28}{'n':>6}  {'metric':<22}{'model':>8}" + (f"{'baseline':>10}" if baseline else "")]
    for name, values in model.items():
        for metric, value in values.items():
            if metric != "n":
                base = f"{baseline[name][metric]:>10.3f}" if baseline else ""
                lines.append(f"{name:<28}{values['n']:>6}  {metric:<22}{value:>8.3f}{base}")
    return "\n".join(lines)


def data_summary(records: list[Record]) -> dict[str, dict[str, int]]:
    """Articles and sentences per language."""
    out: dict[str, dict[str, int]] = {}
    for lang in sorted({r.lang for r in records}):
        mine = [r for r in records if r.lang == lang]
        out[lang] = {"articles": len({r.article_id for r in mine}), "sentences": len(mine)}
    return out


@dataclass
class Evaluation:
    """Everything a report needs: the figures (`metrics`, JSON-ready) and the row-aligned predictions behind them."""

    metrics: dict[str, Any]
    info: ModelInfo
    records: list[Record]
    topic_true: np.ndarray
    stance_true: np.ndarray
    model: SystemOutput
    baseline: SystemOutput | None
    training_splits: dict[str, list[Record]] | None
    own_test_split: bool  # the model's own test articles from its own sources: the figures its model card quotes


def run_evaluation(
    model_dir: str | Path,
    split: str = "test",
    sources: list[str] | None = None,
    splits_file: str | None = None,
    bootstrap_samples: int = 1000,
    baseline: bool = True,
    device: str | None = None,
    allow_overlap: bool = False,
    backend: str = "torch",
    precomputed: tuple[list[Record], SystemOutput] | None = None,
) -> Evaluation:
    """Score the model (and the baseline trained on the model's training data) on `split` of `sources`
    (default: the model's own training sources and split file).

    `precomputed`: the model's predictions already made for exactly these records, in this order (the training run's
    own, made on its test split before export: `train.report`); None tags them with the exported model."""
    info = read_model_info(model_dir)
    if sources is not None:
        eval_sources = list(sources)
    elif info.training is not None:
        eval_sources = list(info.training.sources)
    else:
        raise EvaluationError(f"{info.model_dir}: no training_config.yaml, so there is no default data to evaluate on; pass --sources FILE")
    eval_splits_file = splits_file or (info.training.splits_file if info.training else "data/splits.json")
    check_not_empty(eval_sources)
    records = load_records(eval_sources, info.schema)
    splits, _ = split_records(records, load_splits(eval_splits_file))
    if split == "all":
        target = records
    elif split in splits:
        target = splits[split]
    else:
        raise EvaluationError(f"unknown split '{split}'; use train, dev, test or all")
    if not target:
        raise EvaluationError(
            f"the {split} split of {eval_sources} is empty: {eval_splits_file} (or, for articles it does not list, a hash of the "
            f"article id) puts none of its {len({r.article_id for r in records})} articles there. Use --split all to score every article."
        )

    warnings = list(info.warnings)
    training_splits, training_unavailable = load_training_splits(info)
    if training_splits is not None:
        warnings += overlap_warnings(target, training_splits, allow_overlap)
    elif info.training is not None:
        warnings.append(f"No leakage check: {training_unavailable}.")
    own_sources = info.training is not None and sources is None and splits_file is None
    seed = info.training_seed

    topics, stances = label_matrix(target, info.schema)
    topic_true, stance_true = np.asarray(topics, dtype=bool), np.asarray(stances)
    article_ids = [r.article_id for r in target]
    if precomputed is None:
        model_output = predict_with_model(info.model_dir, target, info.thresholds, device, backend)
    else:
        records, model_output = precomputed
        if [(r.article_id, r.sentence_id) for r in records] != [(r.article_id, r.sentence_id) for r in target]:
            raise EvaluationError(f"the precomputed predictions are not for the {split} split of {eval_sources}, sentence for sentence")
    metrics: dict[str, Any] = {
        "model": str(info.model_dir),
        "backend": backend,
        "predictions_from": "the exported model (coopstance.inference.Tagger)" if precomputed is None
                            else "the training run, just before export (train.report; the exported model tags the same)",
        "base_model": info.base_model,
        "split": split,
        "sources": eval_sources,
        "splits_file": eval_splits_file,
        "trained_on": {"sources": info.training.sources, "splits_file": info.training.splits_file} if info.training else None,
        "data": data_summary(target),
        "thresholds": dict(zip(info.schema.topics, info.thresholds.tolist())),
        "bootstrap_samples": bootstrap_samples,
        "warnings": warnings,
        # F1 from the tagger's own decisions: the scores it returns are rounded to 4 decimals
        "model_scores": evaluate_probabilities(topic_true, model_output.topic_probs, info.thresholds, stance_true, model_output.stance_probs,
                                               article_ids, info.schema, bootstrap_samples, seed, model_output.topic_pred, model_output.stance_pred),
        "model_languages": language_scores(target, topic_true, model_output, stance_true, info.schema, bootstrap_samples, seed),
        "model_slices": slice_scores(target, topic_true, model_output.topic_pred, stance_true, model_output.stance_pred,
                                     info.schema.num_stances),
    }

    baseline_output = None
    if not baseline:
        metrics["baseline_note"] = "baseline switched off (--no-baseline)"
    elif training_splits is None:
        metrics["baseline_note"] = f"no baseline: {training_unavailable}"
        if info.training is not None:  # else read_model_info has said so already
            warnings.append(f"No baseline beside the model: {training_unavailable}.")
    else:
        from coopstance.baseline import SECOND_OPINION_FOLDER, TfidfBaseline

        saved = info.model_dir / SECOND_OPINION_FOLDER  # the same model, fitted at export on the same data: no refit
        fitted = (TfidfBaseline.load(saved, info.schema) if saved.is_dir()
                  else TfidfBaseline(info.schema, seed).fit(training_splits["train"], training_splits["dev"]))
        topic_probs, stance_probs = fitted.predict_proba(target)
        baseline_output = SystemOutput(topic_probs, topic_probs >= fitted.thresholds, stance_probs, stance_probs.argmax(1), fitted.thresholds)
        metrics["baseline_name"] = BASELINE_NAME
        metrics["baseline_trained_on"] = {s: len(training_splits[s]) for s in ("train", "dev")}
        metrics["baseline_scores"] = evaluate_probabilities(topic_true, topic_probs, fitted.thresholds, stance_true, stance_probs,
                                                            article_ids, info.schema, bootstrap_samples, seed)
        metrics["baseline_languages"] = language_scores(target, topic_true, baseline_output, stance_true, info.schema, bootstrap_samples, seed)
        metrics["baseline_slices"] = slice_scores(target, topic_true, baseline_output.topic_pred, stance_true, stance_probs.argmax(1),
                                                  info.schema.num_stances)
    return Evaluation(metrics, info, target, topic_true, stance_true, model_output, baseline_output, training_splits,
                      own_test_split=own_sources and split == "test")


def evaluate_model(
    model_dir: str | Path,
    split: str = "test",
    sources: list[str] | None = None,
    splits_file: str | None = None,
    bootstrap_samples: int = 1000,
    baseline: bool = True,
    device: str | None = None,
    allow_overlap: bool = False,
) -> dict[str, Any]:
    """The figures of `run_evaluation` only (JSON-ready)."""
    return run_evaluation(model_dir, split, sources, splits_file, bootstrap_samples, baseline, device, allow_overlap).metrics
