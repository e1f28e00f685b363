"""Scores: per-topic precision/recall/F1, stance F1, threshold tuning and article-level bootstrap intervals; and,
from probabilities, PR-AUC (average precision), article-level topic F1, expected calibration error and the
reliability-diagram bins.

Sentences of one article are not independent, so confidence intervals resample whole articles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coopstance.labels import LabelSchema

DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return precision, recall, f1


def topic_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-topic precision, recall, F1 for boolean matrices [n, topics]."""
    y_true, y_pred = y_true.astype(bool), y_pred.astype(bool)
    tp = (y_true & y_pred).sum(0).astype(float)
    fp = (~y_true & y_pred).sum(0).astype(float)
    fn = (y_true & ~y_pred).sum(0).astype(float)
    return _f1(tp, fp, fn)


def stance_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 for class-index vectors."""
    onehot = np.eye(num_classes, dtype=bool)
    return topic_f1(onehot[y_true], onehot[y_pred])


def _macro(values: np.ndarray, support: np.ndarray) -> float:
    """Macro average over labels that occur in the gold data (absent labels would add a meaningless 0)."""
    present = support > 0
    return float(values[present].mean()) if present.any() else 0.0


def headline_scores(
    topic_true: np.ndarray, topic_pred: np.ndarray, stance_true: np.ndarray, stance_pred: np.ndarray, num_stances: int
) -> dict[str, float]:
    """The numbers used for model selection and in summaries."""
    return _headline(topic_true, topic_pred, stance_true, stance_pred, num_stances, topic_f1(topic_true, topic_pred)[2],
                     stance_f1(stance_true, stance_pred, num_stances)[2])


def _headline(topic_true: np.ndarray, topic_pred: np.ndarray, stance_true: np.ndarray, stance_pred: np.ndarray, num_stances: int,
              tf1: np.ndarray, sf1: np.ndarray) -> dict[str, float]:
    topic_macro = _macro(tf1, topic_true.sum(0))
    stance_macro = _macro(sf1, np.bincount(stance_true, minlength=num_stances))
    tp = (topic_true.astype(bool) & topic_pred.astype(bool)).sum()
    micro = 2 * tp / max(1, topic_true.sum() + topic_pred.sum())
    return {
        "topic_macro_f1": topic_macro,
        "topic_micro_f1": float(micro),
        "stance_macro_f1": stance_macro,
        "stance_accuracy": float((stance_true == stance_pred).mean()) if len(stance_true) else 0.0,
        "selection_score": (topic_macro + stance_macro) / 2,
    }


def tune_thresholds(topic_probs: np.ndarray, topic_true: np.ndarray) -> np.ndarray:
    """Per-topic threshold with the best dev F1 (ties: the one closest to 0.5); 0.5 where dev has no positive."""
    thresholds = np.full(topic_probs.shape[1], DEFAULT_THRESHOLD)
    for j in range(topic_probs.shape[1]):
        if topic_true[:, j].sum() == 0:
            continue
        preds = topic_probs[:, j][:, None] >= THRESHOLD_GRID[None, :]
        truth = topic_true[:, j].astype(bool)[:, None]
        tp = (preds & truth).sum(0)
        f1 = 2 * tp / np.maximum(1, preds.sum(0) + truth.sum())
        best = np.flatnonzero(f1 == f1.max())
        thresholds[j] = THRESHOLD_GRID[best[np.argmin(np.abs(THRESHOLD_GRID[best] - DEFAULT_THRESHOLD))]]
    return thresholds


def article_groups(article_ids: list[str]) -> list[np.ndarray]:
    """Row indices of each article's sentences, articles in order of first appearance."""
    rows_by_article: dict[str, list[int]] = {}
    for i, a in enumerate(article_ids):
        rows_by_article.setdefault(a, []).append(i)
    return [np.array(rows) for rows in rows_by_article.values()]


def bootstrap_article_draws(num_articles: int, samples: int, seed: int = 0) -> list[np.ndarray]:
    """For each of `samples` resamples, the indices of the articles drawn (with replacement, as many as there are)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, num_articles, num_articles) for _ in range(samples)]


def bootstrap_indices(article_ids: list[str], samples: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of `samples` resamples that draw whole articles with replacement."""
    groups = article_groups(article_ids)
    return [np.concatenate([groups[k] for k in draw]) for draw in bootstrap_article_draws(len(groups), samples, seed)]


def evaluate_predictions(
    topic_true: np.ndarray,
    topic_pred: np.ndarray,
    stance_true: np.ndarray,
    stance_pred: np.ndarray,
    article_ids: list[str],
    schema: LabelSchema,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Full report: headline scores and per-label P/R/F1/support, each F1 with a 95% article-bootstrap interval."""
    head = headline_scores(topic_true, topic_pred, stance_true, stance_pred, schema.num_stances)
    tp_, tr_, tf_ = topic_f1(topic_true, topic_pred)
    sp_, sr_, sf_ = stance_f1(stance_true, stance_pred, schema.num_stances)
    boot_head: dict[str, list[float]] = {k: [] for k in head}
    boot_topic, boot_stance = [], []
    for idx in bootstrap_indices(article_ids, bootstrap_samples, seed):
        sample = (topic_true[idx], topic_pred[idx], stance_true[idx], stance_pred[idx])
        boot_topic.append(topic_f1(sample[0], sample[1])[2])
        boot_stance.append(stance_f1(sample[2], sample[3], schema.num_stances)[2])
        for k, v in _headline(*sample, schema.num_stances, boot_topic[-1], boot_stance[-1]).items():
            boot_head[k].append(v)

    def ci(values: Any) -> list[float] | None:
        if not bootstrap_samples:
            return None
        lo, hi = np.percentile(np.asarray(values), [2.5, 97.5], axis=0)
        return [round(float(lo), 4), round(float(hi), 4)]

    topic_support = topic_true.sum(0).astype(int)
    stance_support = np.bincount(stance_true, minlength=schema.num_stances)
    return {
        "n_sentences": int(len(stance_true)),
        "n_articles": len(set(article_ids)),
        **{k: round(v, 4) for k, v in head.items()},
        "ci95": {k: ci(v) for k, v in boot_head.items()},
        "topics": {
            t: {
                "precision": round(float(tp_[j]), 4), "recall": round(float(tr_[j]), 4), "f1": round(float(tf_[j]), 4),
                "f1_ci95": ci([b[j] for b in boot_topic]), "support": int(topic_support[j]),
            }
            for j, t in enumerate(schema.topics)
        },
        "stances": {
            s: {
                "precision": round(float(sp_[k]), 4), "recall": round(float(sr_[k]), 4), "f1": round(float(sf_[k]), 4),
                "f1_ci95": ci([b[k] for b in boot_stance]), "support": int(stance_support[k]),
            }
            for k, s in enumerate(schema.stances)
        },
    }


def epoch_dev_scores(
    topic_true: np.ndarray, topic_probs: np.ndarray, stance_true: np.ndarray, stance_pred: np.ndarray, num_stances: int
) -> dict[str, float]:
    """The per-epoch dev figures of the training log, each topic figure labelled with its cut-off.

    `*_at_0.5` uses the fixed 0.5 cut-off (as does `selection_score`, which picks the best epoch); `*_tuned_on_dev` uses
    thresholds tuned on these same dev sentences, as metrics.json does: optimistic, but the figure to set beside it.
    """
    at_half = headline_scores(topic_true, topic_probs >= DEFAULT_THRESHOLD, stance_true, stance_pred, num_stances)
    tuned = headline_scores(topic_true, topic_probs >= tune_thresholds(topic_probs, topic_true), stance_true, stance_pred, num_stances)
    return {
        "topic_macro_f1_at_0.5": at_half["topic_macro_f1"],
        "topic_micro_f1_at_0.5": at_half["topic_micro_f1"],
        "topic_macro_f1_tuned_on_dev": tuned["topic_macro_f1"],
        "topic_micro_f1_tuned_on_dev": tuned["topic_micro_f1"],
        "stance_macro_f1": at_half["stance_macro_f1"],
        "stance_accuracy": at_half["stance_accuracy"],
        "selection_score": at_half["selection_score"],
    }


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision: the precision at each rank where recall rises,
    weighted by the rise (no interpolation; tied scores form one step, as in scikit-learn). None without positives."""
    y = np.asarray(y_true, dtype=bool)
    positives = int(y.sum())
    if positives == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=float), kind="mergesort")
    sorted_scores, y = np.asarray(scores, dtype=float)[order], y[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tp = np.cumsum(y)[last_of_each_score]
    precision = tp / (last_of_each_score + 1)
    recall_rise = np.diff(np.r_[0, tp]) / positives
    return float((recall_rise * precision).sum())


def calibration_bins(probs: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width probability bins ([0, 0.1), ..., [0.9, 1.0]): count, mean predicted probability, observed frequency."""
    probs, outcomes = np.asarray(probs, dtype=float).ravel(), np.asarray(outcomes, dtype=float).ravel()
    index = np.minimum((probs * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        out.append({
            "lower": b / bins, "upper": (b + 1) / bins, "n": n,
            "mean_probability": float(probs[inside].mean()) if n else None,
            "observed_frequency": float(outcomes[inside].mean()) if n else None,
        })
    return out


def expected_calibration_error(probs: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> float:
    """Sum over equal-width bins of (share of predictions in the bin) x |observed frequency - mean probability|."""
    total = np.asarray(probs).size
    return float(sum(b["n"] / total * abs(b["observed_frequency"] - b["mean_probability"])
                     for b in calibration_bins(probs, outcomes, bins) if b["n"])) if total else 0.0


def article_topic_matrix(article_ids: list[str], topic_matrix: np.ndarray) -> np.ndarray:
    """Articles x topics (articles in order of first appearance): an article has a topic if any of its sentences has it."""
    return np.array([np.asarray(topic_matrix, dtype=bool)[rows].any(axis=0) for rows in article_groups(article_ids)])


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [gold class, predicted class]."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(true), np.asarray(pred)), 1)
    return matrix


def _threshold_free_scores(
    topic_true: np.ndarray, topic_probs: np.ndarray, stance_true: np.ndarray, stance_probs: np.ndarray,
    article_true: np.ndarray, article_pred: np.ndarray,
) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """The figures beside the tuned-threshold F1: F1 at 0.5, PR-AUC, article-level F1, calibration."""
    f1_at_half = topic_f1(topic_true, topic_probs >= DEFAULT_THRESHOLD)[2]
    article_f1 = topic_f1(article_true, article_pred)[2]
    pr_auc = [average_precision(topic_true[:, j], topic_probs[:, j]) for j in range(topic_true.shape[1])]
    present = [v for v in pr_auc if v is not None]
    stance_pred = stance_probs.argmax(1)
    head = {
        "topic_macro_f1_at_0.5": _macro(f1_at_half, topic_true.sum(0)),
        "topic_macro_pr_auc": float(np.mean(present)) if present else None,
        "article_topic_macro_f1": _macro(article_f1, article_true.sum(0)),
        "topic_ece": expected_calibration_error(topic_probs, topic_true),
        "stance_ece": expected_calibration_error(stance_probs.max(1), stance_pred == stance_true),
    }
    per_topic = {"f1_at_0.5": f1_at_half, "article_f1": article_f1, "pr_auc": np.array([np.nan if v is None else v for v in pr_auc])}
    return head, per_topic


def evaluate_probabilities(
    topic_true: np.ndarray,
    topic_probs: np.ndarray,
    thresholds: np.ndarray,
    stance_true: np.ndarray,
    stance_probs: np.ndarray,
    article_ids: list[str],
    schema: LabelSchema,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    topic_pred: np.ndarray | None = None,
    stance_pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """`evaluate_predictions` at the given topic thresholds and the most probable stance (or of the decisions
    `topic_pred`, `stance_pred`, where they were made from unrounded probabilities), plus what the probabilities tell
    beyond them: F1 at 0.5, PR-AUC per topic, article-level topic F1 (an article has a topic if any sentence has it),
    expected calibration error (topics: every sentence x topic probability; stance: confidence of the predicted class
    against being right), the stance confusion matrix and the reliability-diagram bins. Headline figures get 95%
    article-bootstrap intervals from the same resampled articles."""
    topic_true = np.asarray(topic_true, dtype=bool)
    topic_pred = topic_probs >= thresholds if topic_pred is None else np.asarray(topic_pred, dtype=bool)
    stance_pred = stance_probs.argmax(1) if stance_pred is None else np.asarray(stance_pred)
    report = evaluate_predictions(topic_true, topic_pred, stance_true, stance_pred, article_ids, schema, bootstrap_samples, seed)
    groups = article_groups(article_ids)
    article_true = article_topic_matrix(article_ids, topic_true)
    article_pred = article_topic_matrix(article_ids, topic_pred)
    none_index = schema.stances.index("none") if "none" in schema.stances else None
    in_china_free_article = china_free_article_rows(stance_true, article_ids, none_index) if none_index is not None else None

    def china_stance_rate(rows: np.ndarray) -> dict[str, float | None]:
        if none_index is None:
            return {}
        gold_none = stance_true[rows] == none_index
        given = stance_pred[rows] != none_index
        china_free = gold_none & in_china_free_article[rows]
        return {"china_stance_without_china_rate": float(given[gold_none].mean()) if gold_none.any() else None,
                "china_stance_in_china_free_articles_rate": float(given[china_free].mean()) if china_free.any() else None}

    head, per_topic = _threshold_free_scores(topic_true, topic_probs, stance_true, stance_probs, article_true, article_pred)
    head.update(china_stance_rate(np.arange(len(stance_true))))
    boot: dict[str, list[float]] = {k: [] for k in head}
    for draw in bootstrap_article_draws(len(groups), bootstrap_samples, seed):
        rows = np.concatenate([groups[k] for k in draw])
        sample, _ = _threshold_free_scores(topic_true[rows], topic_probs[rows], stance_true[rows], stance_probs[rows],
                                           article_true[draw], article_pred[draw])
        sample.update(china_stance_rate(rows))
        for k, v in sample.items():
            if v is not None:
                boot[k].append(v)
    for k, v in head.items():
        report[k] = None if v is None else round(v, 4)
        values = boot[k]
        report["ci95"][k] = [round(float(x), 4) for x in np.percentile(values, [2.5, 97.5])] if values else None
    article_support = article_true.sum(0)
    for j, t in enumerate(schema.topics):
        entry = report["topics"][t]
        entry["threshold"] = round(float(np.broadcast_to(thresholds, (schema.num_topics,))[j]), 4)
        entry["f1_at_0.5"] = round(float(per_topic["f1_at_0.5"][j]), 4)
        entry["pr_auc"] = None if np.isnan(per_topic["pr_auc"][j]) else round(float(per_topic["pr_auc"][j]), 4)
        entry["article_f1"] = round(float(per_topic["article_f1"][j]), 4)
        entry["article_support"] = int(article_support[j])
    if none_index is not None:
        report["china_stance_without_china"] = china_stance_without_china(stance_true, stance_pred, none_index, article_ids)
    report["stance_confusion"] = {"rows_gold_columns_predicted": list(schema.stances),
                                  "counts": confusion_matrix(stance_true, stance_pred, schema.num_stances).tolist()}
    report["calibration"] = {
        "topics": calibration_bins(topic_probs, topic_true),
        "stance": calibration_bins(stance_probs.max(1), stance_pred == stance_true),
    }
    return report


def format_report(title: str, report: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """A plain-text table: model F1 with its interval, and the baseline's F1 beside it."""

    def cell(entry: dict[str, Any]) -> str:
        ci = entry.get("f1_ci95")
        return f"{entry['f1']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    lines = [f"{title}: {report['n_sentences']} sentences, {report['n_articles']} articles (95% CI: article bootstrap)"]
    header = f"{'label':<32}{'support':>8}  {'P':>6} {'R':>6}  {'model F1 [95% CI]':<22}" + ("  baseline F1" if baseline else "")
    lines.append(header)
    lines.append("-" * len(header))
    for section in ("topics", "stances"):
        for name, entry in report[section].items():
            base = f"  {baseline[section][name]['f1']:.3f}" if baseline else ""
            label = ("topic/" if section == "topics" else "stance/") + name
            lines.append(f"{label:<32}{entry['support']:>8}  {entry['precision']:>6.3f} {entry['recall']:>6.3f}  {cell(entry):<22}{base}")
    lines.append("-" * len(header))
    for key in ("topic_macro_f1", "topic_micro_f1", "stance_macro_f1", "stance_accuracy", "selection_score"):
        ci = report["ci95"].get(key)
        value = f"{report[key]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        base = f"  {baseline[key]:.3f}" if baseline else ""
        lines.append(f"{key:<32}{'':>8}  {'':>6} {'':>6}  {value:<22}{base}")
    return "\n".join(lines)


def china_free_article_rows(gold_stance: np.ndarray, article_ids: list[str], none_index: int) -> np.ndarray:
    """Per sentence: whether its article never refers to China (every sentence gold `none`)."""
    gold_none = np.asarray(gold_stance) == none_index
    rows = np.zeros(len(gold_none), dtype=bool)
    for group in article_groups(article_ids):
        rows[group] = gold_none[group].all()
    return rows


def china_stance_without_china(gold_stance: np.ndarray, pred_stance: np.ndarray, none_index: int,
                               article_ids: list[str] | None = None) -> dict[str, Any]:
    """How often a sentence that does not refer to China (gold stance `none`) is given a China stance.

    The commonest real-news error: cooperation among other countries tagged `cooperative`, which means cooperation
    *with China*. Reported as the share of gold-`none` sentences predicted otherwise. With `article_ids`, also apart for
    the sentences of articles that never refer to China (that error in its pure form: a US-Japan-Korea summit report)
    and for the gold-`none` sentences of articles that do (a reporter's aside, a byline, a sentence about another
    country: the guideline's finer calls)."""
    gold_none = np.asarray(gold_stance) == none_index
    wrong = gold_none & (np.asarray(pred_stance) != none_index)

    def rate(rows: np.ndarray) -> dict[str, float | int]:
        n = int(rows.sum())
        return {"rate": round(float(wrong[rows].sum() / n), 4) if n else 0.0, "n_gold_none": n, "n_given_a_stance": int(wrong[rows].sum())}

    result: dict[str, Any] = rate(gold_none)
    if article_ids is not None:
        china_free = china_free_article_rows(gold_stance, article_ids, none_index)
        result["in_china_free_articles"] = rate(gold_none & china_free)
        result["in_articles_about_china"] = rate(gold_none & ~china_free)
    return result
