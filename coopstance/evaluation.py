"""Score an exported model on held-out articles, with article-bootstrap intervals and a baseline beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from coopstance.config import DataArgs
from coopstance.data import Record, group_articles, label_matrix, load_records, load_splits, split_records
from coopstance.inference import Tagger
from coopstance.labels import load_schema
from coopstance.metrics import evaluate_predictions, headline_scores, sigmoid


def data_args_for(model_dir: Path) -> DataArgs:
    """The data settings the model was trained with (from its training_config.yaml), else the defaults."""
    saved = model_dir / "training_config.yaml"
    if saved.is_file():
        values = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("data", {})
        return DataArgs(**values)
    return DataArgs()


def predict_records(tagger: Tagger, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Topic probabilities and stance indices, row-aligned with `records`; context comes from each article."""
    num_topics = tagger.schema.num_topics
    topic_probs = np.zeros((len(records), num_topics))
    stance = np.zeros(len(records), dtype=int)
    row = {(r.article_id, r.sentence_id): i for i, r in enumerate(records)}
    for sentences in group_articles(records).values():
        logits = tagger.logits([r.text for r in sentences])
        rows = [row[(r.article_id, r.sentence_id)] for r in sentences]
        topic_probs[rows] = sigmoid(logits[:, :num_topics])
        stance[rows] = logits[:, num_topics:].argmax(1)
    return topic_probs, stance


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


def format_slices(model: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]] | None) -> str:
    lines = [f"{'slice':<28}{'n':>6}  {'metric':<22}{'model':>8}" + (f"{'baseline':>10}" if baseline else "")]
    for name, values in model.items():
        for metric, value in values.items():
            if metric != "n":
                base = f"{baseline[name][metric]:>10.3f}" if baseline else ""
                lines.append(f"{name:<28}{values['n']:>6}  {metric:<22}{value:>8.3f}{base}")
    return "\n".join(lines)


def evaluate_model(
    model_dir: str | Path,
    split: str = "test",
    sources: list[str] | None = None,
    splits_file: str | None = None,
    bootstrap_samples: int = 1000,
    baseline: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    model_dir = Path(model_dir)
    tagger = Tagger(model_dir, device=device)
    data = data_args_for(model_dir)
    schema = load_schema(data.labels_file)
    if tuple(schema.topics) != tagger.schema.topics or tuple(schema.stances) != tagger.schema.stances:
        raise ValueError(
            f"{model_dir} was trained with labels {tagger.schema.topics + tagger.schema.stances}, but "
            f"{data.labels_file} now defines {schema.topics + schema.stances}; retrain or restore the label file"
        )
    records = load_records(sources or data.sources, schema)
    splits, _ = split_records(records, load_splits(splits_file or data.splits_file))
    if split == "all":
        target = records
    elif split in splits:
        target = splits[split]
    else:
        raise ValueError(f"unknown split '{split}'; use train, dev, test or all")
    if not target:
        raise ValueError(f"the {split} split has no records in {sources or data.sources}")
    topic_probs, stance_pred = predict_records(tagger, target)
    topics, stances = label_matrix(target, schema)
    topic_true, stance_true = np.asarray(topics, dtype=bool), np.asarray(stances)
    topic_pred = topic_probs >= tagger.thresholds
    article_ids = [r.article_id for r in target]
    result: dict[str, Any] = {
        "model": str(model_dir),
        "split": split,
        "thresholds": dict(zip(schema.topics, tagger.thresholds.tolist())),
        "model_scores": evaluate_predictions(topic_true, topic_pred, stance_true, stance_pred, article_ids, schema, bootstrap_samples),
        "model_slices": slice_scores(target, topic_true, topic_pred, stance_true, stance_pred, schema.num_stances),
    }
    if baseline and splits["train"] and splits["dev"]:
        from coopstance.baseline import TfidfBaseline

        base_topics, base_stance = TfidfBaseline(schema).fit(splits["train"], splits["dev"]).predict(target)
        result["baseline_name"] = "char 2-4-gram TF-IDF + logistic regression (trained on train, thresholds on dev)"
        result["baseline_scores"] = evaluate_predictions(topic_true, base_topics, stance_true, base_stance, article_ids, schema, bootstrap_samples)
        result["baseline_slices"] = slice_scores(target, topic_true, base_topics, stance_true, base_stance, schema.num_stances)
    return result
