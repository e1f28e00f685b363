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
from coopstance.metrics import evaluate_predictions, sigmoid


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
    article_ids = [r.article_id for r in target]
    result: dict[str, Any] = {
        "model": str(model_dir),
        "split": split,
        "thresholds": dict(zip(schema.topics, tagger.thresholds.tolist())),
        "model_scores": evaluate_predictions(
            np.asarray(topics, dtype=bool), topic_probs >= tagger.thresholds, np.asarray(stances), stance_pred,
            article_ids, schema, bootstrap_samples,
        ),
    }
    if baseline and splits["train"] and splits["dev"]:
        from coopstance.baseline import TfidfBaseline

        base_topics, base_stance = TfidfBaseline(schema).fit(splits["train"], splits["dev"]).predict(target)
        result["baseline_name"] = "char 2-4-gram TF-IDF + logistic regression (trained on train, thresholds on dev)"
        result["baseline_scores"] = evaluate_predictions(
            np.asarray(topics, dtype=bool), base_topics, np.asarray(stances), base_stance, article_ids, schema, bootstrap_samples,
        )
    return result
