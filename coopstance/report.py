"""The evaluation report folder `<run>/eval/<name>/`, written from an `Evaluation`:

    report.md          readable on its own and on a code-hosting site: what was evaluated, headline table with 95%
                       intervals, per-topic / per-stance / per-language tables with the baseline beside every number,
                       hard cases, calibration, the plots, and error analysis
    metrics.json       every figure
    predictions.jsonl  per sentence: ids, language, text, gold, predicted, all scores (model and baseline)
    *.png              the plots embedded in report.md

Plots are drawn with matplotlib's object-oriented API (`matplotlib.figure.Figure`, rendered by the Agg backend): no
display and no global pyplot state. The folder is written to a temporary sibling and renamed into place, so a
reader never sees half a report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from coopstance.data import Record, group_articles
from coopstance.evaluation import Evaluation, SystemOutput
from coopstance.modelcard import base_model

MODEL_COLOUR, BASELINE_COLOUR = "#1f5fa8", "#9a9a9a"
TOPIC_EXAMPLES = 5  # most confident false positives and false negatives shown per topic
STANCE_EXAMPLES = 3  # examples shown per off-diagonal cell of the stance confusion matrix
PLOT_DPI = 110

HEADLINE_ROWS = (
    ("topic_macro_f1", "Topic macro-F1, tuned thresholds", "mean over topics of F1, each topic at the threshold tuned on dev at export"),
    ("topic_macro_f1_at_0.5", "Topic macro-F1 at 0.5", "the same with every threshold at 0.5 (the per-epoch training log shows both, labelled)"),
    ("topic_micro_f1", "Topic micro-F1", "F1 over all sentence-topic decisions pooled (frequent topics weigh more)"),
    ("topic_macro_pr_auc", "Topic macro PR-AUC", "area under the precision-recall curve (average precision), mean over topics: "
                                                 "how well the scores rank, whatever the threshold"),
    ("article_topic_macro_f1", "Article-level topic macro-F1", "an article has a topic if any of its sentences has it"),
    ("stance_macro_f1", "Stance macro-F1", "mean over the four stance classes of F1"),
    ("stance_accuracy", "Stance accuracy", "share of sentences with the right stance"),
    ("china_stance_without_china_rate", "China stance without China", "share of sentences that do not refer to China (gold `none`) "
                                                                     "given a stance toward China; lower is better"),
    ("china_stance_in_china_free_articles_rate", "... in articles without China", "the same, counting only the sentences of "
     "articles that never refer to China (a report on a US-Japan-Korea summit): the error in its pure form"),
    ("topic_ece", "Topic calibration error (ECE)", "expected calibration error of every sentence x topic probability, 10 bins; lower is better"),
    ("stance_ece", "Stance calibration error (ECE)", "of the predicted stance's probability against being right, 10 bins; lower is better"),
)


def report_name(split: str, sources: list[str] | None) -> str:
    """`test`, `dev`, ... for the model's own data; the file name(s) (and the split unless `all`) for other data."""
    if not sources:
        return split
    stems = "+".join(Path(s.rstrip("/")).stem or "data" for s in sources)
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", stems)[:80]
    return name if split == "all" else f"{name}-{split}"


# ---------------------------------------------------------------------------------------------------------------
# Formatting helpers.


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    return _num(value) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and value is not None else "")


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell or list item."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _table(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


# ---------------------------------------------------------------------------------------------------------------
# Plots.


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=PLOT_DPI, bbox_inches="tight")


def plot_topic_f1(metrics: dict[str, Any], path: Path) -> None:
    """Per-topic F1 at the tuned thresholds with 95% intervals, model beside baseline."""
    systems = [("model", metrics["model_scores"], MODEL_COLOUR)]
    if "baseline_scores" in metrics:
        systems.append(("baseline (TF-IDF)", metrics["baseline_scores"], BASELINE_COLOUR))
    topics = list(metrics["model_scores"]["topics"])
    fig = Figure(figsize=(7.5, 0.45 * len(topics) + 1.2), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(systems)
    for k, (label, scores, colour) in enumerate(systems):
        y = np.arange(len(topics)) - 0.4 + height * (k + 0.5)
        f1 = np.array([scores["topics"][t]["f1"] for t in topics])
        cis = [scores["topics"][t]["f1_ci95"] or [v, v] for t, v in zip(topics, f1)]
        err = np.array([[v - lo for v, (lo, _) in zip(f1, cis)], [hi - v for v, (_, hi) in zip(f1, cis)]]).clip(min=0)
        ax.barh(y, f1, height=height, color=colour, label=label, xerr=err, error_kw={"elinewidth": 1, "capsize": 2})
    ax.set_yticks(np.arange(len(topics)), topics)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 at the tuned threshold (bars: 95% article-bootstrap interval)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_stance_confusion(metrics: dict[str, Any], path: Path) -> None:
    """Stance confusion matrices (rows: gold, columns: predicted), shaded by the share of each gold row."""
    panels = [("model", metrics["model_scores"])] + ([("baseline (TF-IDF)", metrics["baseline_scores"])] if "baseline_scores" in metrics else [])
    fig = Figure(figsize=(4.6 * len(panels), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, scores) in zip(axes, panels):
        names = scores["stance_confusion"]["rows_gold_columns_predicted"]
        counts = np.array(scores["stance_confusion"]["counts"])
        shares = counts / np.maximum(1, counts.sum(1, keepdims=True))
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{title}: stance macro-F1 {scores['stance_macro_f1']:.2f}", fontsize="medium")
    _save(fig, path)


def plot_pr_curves(evaluation: Evaluation, path: Path) -> None:
    """Precision-recall curve per topic, with the operating point at the chosen threshold marked."""
    from sklearn.metrics import precision_recall_curve

    topics = evaluation.info.schema.topics
    systems = [("model", evaluation.model, evaluation.metrics["model_scores"], MODEL_COLOUR, "-")]
    if evaluation.baseline is not None:
        systems.append(("baseline", evaluation.baseline, evaluation.metrics["baseline_scores"], BASELINE_COLOUR, "--"))
    cols = 5
    rows = int(np.ceil(len(topics) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    axes = np.array(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    for j, topic in enumerate(topics):
        ax = axes[j]
        truth = evaluation.topic_true[:, j]
        for label, output, scores, colour, style in systems:
            entry = scores["topics"][topic]
            legend = f"{label}: AP {_num(entry['pr_auc'], 2)}, threshold {entry['threshold']:.2f}"
            if truth.any():
                precision, recall, _ = precision_recall_curve(truth, output.topic_probs[:, j])
                ax.plot(recall, precision, style, color=colour, drawstyle="steps-post", lw=1.2, label=legend)
            ax.plot([entry["recall"]], [entry["precision"]], "o", color=colour, ms=6, mec="black", mew=0.6)
        ax.set_title(f"{topic} ({int(truth.sum())} gold)", fontsize="small")
        if ax.get_legend_handles_labels()[0]:  # no curve for a topic without gold positives
            ax.legend(fontsize="xx-small", loc="upper right")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[len(topics):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("precision")
    for ax in axes[-cols:]:
        ax.set_xlabel("recall")
    fig.suptitle("Precision-recall per topic; dot: the operating point at the chosen threshold", fontsize="medium")
    _save(fig, path)


def plot_languages(metrics: dict[str, Any], path: Path) -> None:
    """Topic and stance macro-F1 per language with 95% intervals, model beside baseline."""
    systems = [("model", metrics["model_languages"], MODEL_COLOUR)]
    if "baseline_languages" in metrics:
        systems.append(("baseline (TF-IDF)", metrics["baseline_languages"], BASELINE_COLOUR))
    langs = list(metrics["model_languages"])
    fig = Figure(figsize=(max(6.0, 1.1 * len(langs) * 2), 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    width = 0.8 / len(systems)
    for ax, key, title in zip(axes, ("topic_macro_f1", "stance_macro_f1"), ("topic macro-F1 (tuned thresholds)", "stance macro-F1")):
        for k, (label, per_lang, colour) in enumerate(systems):
            x = np.arange(len(langs)) - 0.4 + width * (k + 0.5)
            values = np.array([per_lang[lang][key] for lang in langs])
            cis = [per_lang[lang]["ci95"][key] or [v, v] for lang, v in zip(langs, values)]
            err = np.array([[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]]).clip(min=0)
            ax.bar(x, values, width=width, color=colour, label=label, yerr=err, error_kw={"elinewidth": 1, "capsize": 2})
        ax.set_xticks(np.arange(len(langs)), langs)
        ax.set_title(title, fontsize="medium")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("F1 (bars: 95% article-bootstrap interval)")
    axes[0].legend(fontsize="small")
    _save(fig, path)


def plot_reliability(metrics: dict[str, Any], path: Path) -> None:
    """Reliability diagrams: mean predicted probability against observed frequency per bin, for topics and stance."""
    systems = [("model", metrics["model_scores"], MODEL_COLOUR)]
    if "baseline_scores" in metrics:
        systems.append(("baseline (TF-IDF)", metrics["baseline_scores"], BASELINE_COLOUR))
    fig = Figure(figsize=(9.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (("topics", "topic_ece", "Topics: every sentence x topic probability", "observed frequency of the topic"),
              ("stance", "stance_ece", "Stance: probability of the predicted class", "observed share predicted right"))
    for ax, (key, ece_key, title, ylabel) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], ":", color="black", lw=1, label="perfect calibration")
        for label, scores, colour in systems:
            bins = [b for b in scores["calibration"][key] if b["n"]]
            x = [b["mean_probability"] for b in bins]
            y = [b["observed_frequency"] for b in bins]
            sizes = [12 + 80 * np.sqrt(b["n"] / max(c["n"] for c in bins)) for b in bins]
            ax.plot(x, y, "-", color=colour, lw=1)
            ax.scatter(x, y, s=sizes, color=colour, label=f"{label} (ECE {scores[ece_key]:.3f})", zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability in the bin")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left")
    fig.suptitle("Reliability (10 equal-width bins; dot area: sentences in the bin)", fontsize="medium")
    _save(fig, path)


PLOTS = (
    ("topic_f1.png", "Per-topic F1 at the tuned thresholds with 95% article-bootstrap intervals, model beside the TF-IDF baseline."),
    ("pr_curves.png", "Precision-recall curve of each topic; the dot is the operating point at the topic's chosen threshold "
                      "(model: tuned on the model's dev split at export; baseline: tuned on the same dev split)."),
    ("stance_confusion.png", "Stance confusion matrix: rows are the gold stance, columns the prediction; shading is the share of the gold row."),
    ("languages.png", "Topic and stance macro-F1 per language with 95% article-bootstrap intervals."),
    ("reliability.png", "Reliability diagram: in each probability bin, the mean predicted probability against how often the "
                        "event happened. On the diagonal, a score of 0.8 is right 80% of the time."),
)


def write_plots(evaluation: Evaluation, folder: Path) -> None:
    metrics = evaluation.metrics
    plot_topic_f1(metrics, folder / "topic_f1.png")
    plot_pr_curves(evaluation, folder / "pr_curves.png")
    plot_stance_confusion(metrics, folder / "stance_confusion.png")
    plot_languages(metrics, folder / "languages.png")
    plot_reliability(metrics, folder / "reliability.png")


# ---------------------------------------------------------------------------------------------------------------
# Per-sentence predictions and error analysis.


def _system_row(output: SystemOutput, i: int, evaluation: Evaluation) -> dict[str, Any]:
    schema = evaluation.info.schema
    return {
        "topics": [t for t, on in zip(schema.topics, output.topic_pred[i]) if on],
        "stance": schema.stances[int(output.stance_pred[i])],
        "topic_scores": {t: round(float(p), 4) for t, p in zip(schema.topics, output.topic_probs[i])},
        "stance_scores": {s: round(float(p), 4) for s, p in zip(schema.stances, output.stance_probs[i])},
    }


def prediction_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    rows = []
    for i, r in enumerate(evaluation.records):
        row: dict[str, Any] = {
            "article_id": r.article_id, "sentence_id": r.sentence_id, "lang": r.lang, "text": r.text,
            "hard_case": r.extra.get("hard_case"), "source": r.where,
            "gold": {"topics": list(r.topics), "stance": r.stance},
            "predicted": _system_row(evaluation.model, i, evaluation),
        }
        if evaluation.baseline is not None:
            row["baseline"] = _system_row(evaluation.baseline, i, evaluation)
        rows.append(row)
    return rows


def _previous_sentences(records: list[Record]) -> dict[tuple[str, int], str]:
    out = {}
    for sentences in group_articles(records).values():
        for before, r in zip(sentences, sentences[1:]):
            out[(r.article_id, r.sentence_id)] = before.text
    return out


def _example(r: Record, score: float, detail: str, before: str | None) -> str:
    hard = f" · hard case: {r.extra['hard_case']}" if r.extra.get("hard_case") else ""
    lines = [f"- **{score:.2f}** · {r.lang} · `{r.article_id}:{r.sentence_id}` · {detail}{hard}  ", f"  {_cell(r.text)}"]
    if before is not None:
        shortened = before if len(before) <= 160 else before[:157] + "..."
        lines[-1] += "  "
        lines.append(f"  <sub>previous sentence: {_cell(shortened)}</sub>")
    return "\n".join(lines)


def error_analysis(evaluation: Evaluation) -> str:
    """For each topic the most confident false positives and false negatives; for stance, examples of every
    off-diagonal cell of the confusion matrix (most confident first), with the previous sentence for context."""
    schema, records, model = evaluation.info.schema, evaluation.records, evaluation.model
    previous = _previous_sentences(records)
    parts = ["## Error analysis", "",
             "The model's most confident mistakes, for an annotator to judge whether the model or the label is wrong. "
             "Score: the model's probability for the topic (false positives: highest first; false negatives: lowest first) "
             "or for the predicted stance. Every sentence with all its scores is in `predictions.jsonl`.", ""]
    for j, topic in enumerate(schema.topics):
        truth, pred, probs = evaluation.topic_true[:, j], model.topic_pred[:, j], model.topic_probs[:, j]
        fp = [i for i in np.argsort(-probs, kind="stable") if pred[i] and not truth[i]][:TOPIC_EXAMPLES]
        fn = [i for i in np.argsort(probs, kind="stable") if truth[i] and not pred[i]][:TOPIC_EXAMPLES]
        n_fp, n_fn = int((pred & ~truth).sum()), int((truth & ~pred).sum())
        parts.append(f"### topic `{topic}` (threshold {model.thresholds[j]:.2f}): {n_fp} false positives, {n_fn} false negatives")
        parts.append("")
        for title, rows in (("Most confident false positives (predicted, not in gold)", fp),
                            ("Most confident false negatives (in gold, missed)", fn)):
            if rows:
                parts.append(f"{title}:")
                parts.append("")
                for i in rows:
                    r = records[i]
                    parts.append(_example(r, probs[i], f"gold topics: {', '.join(r.topics) or 'none'}", None))
                parts.append("")
    parts.append("### Stance")
    parts.append("")
    counts = np.array(evaluation.metrics["model_scores"]["stance_confusion"]["counts"])
    for g, gold in enumerate(schema.stances):
        for p, predicted in enumerate(schema.stances):
            if g == p or counts[g, p] == 0:
                continue
            cell = [i for i in range(len(records)) if evaluation.stance_true[i] == g and model.stance_pred[i] == p]
            cell.sort(key=lambda i: -model.stance_probs[i, p])
            parts.append(f"Gold `{gold}`, predicted `{predicted}`: {counts[g, p]} sentence(s)")
            parts.append("")
            for i in cell[:STANCE_EXAMPLES]:
                r = records[i]
                before = previous.get((r.article_id, r.sentence_id))
                parts.append(_example(r, model.stance_probs[i, p], f"gold {gold} → predicted {predicted}", before))
            parts.append("")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# report.md


def _warnings(metrics: dict[str, Any]) -> str:
    return "\n".join(f"> **Warning.** {_cell(w)}\n" for w in metrics["warnings"])


def _what_was_evaluated(evaluation: Evaluation) -> str:
    m = evaluation.metrics
    trained = m["trained_on"]
    lines = [
        "## What was evaluated", "",
        f"- **Model:** `{m['model']}`, fine-tuned from {base_model(m.get('base_model'))[1]}"
        + ("" if m.get("backend", "torch") == "torch" else f"; run with ONNX Runtime (`{m['backend']}`)")
        + (f"; predictions from {m['predictions_from']}" if m.get("predictions_from", "").startswith("the training run") else ""),
        f"- **Trained on:** {', '.join(f'`{s}`' for s in trained['sources'])}, split by `{trained['splits_file']}`" if trained
        else "- **Trained on:** unknown (no training_config.yaml in the model folder)",
        f"- **Evaluated on:** every article of {', '.join(f'`{s}`' for s in m['sources'])}" if m["split"] == "all" else
        f"- **Evaluated on:** the `{m['split']}` split of {', '.join(f'`{s}`' for s in m['sources'])} (split file `{m['splits_file']}`; "
        "articles it does not list are split by a hash of their id)",
        "- **Topic thresholds:** tuned per topic on the model's dev split at export: "
        + ", ".join(f"{t} {v:.2f}" for t, v in m["thresholds"].items()),
        f"- **Baseline:** {m['baseline_name']}, fitted on {m['baseline_trained_on']['train']} training and "
        f"{m['baseline_trained_on']['dev']} dev sentences of the model's own training data, never on the evaluated data"
        if "baseline_name" in m else f"- **Baseline:** none ({m.get('baseline_note', '')})",
        "- **Intervals:** 95% percentile intervals from "
        f"{m.get('bootstrap_samples', 'the')} bootstrap resamples of whole articles (the sentences of one article are not independent)",
        "",
    ]
    rows = [[lang, str(v["articles"]), str(v["sentences"])] for lang, v in m["data"].items()]
    rows.append(["**all**", str(m["model_scores"]["n_articles"]), str(m["model_scores"]["n_sentences"])])
    lines.append(_table(["language", "articles", "sentences"], rows))
    return "\n".join(lines)


def _headline(metrics: dict[str, Any]) -> str:
    model, base = metrics["model_scores"], metrics.get("baseline_scores")
    rows = []
    for key, label, _ in HEADLINE_ROWS:
        row = [label, _with_ci(model.get(key), model["ci95"].get(key))]
        if base:
            row.append(_with_ci(base.get(key), base["ci95"].get(key)))
        rows.append(row)
    header = ["figure", "model [95% CI]"] + (["baseline [95% CI]"] if base else [])
    notes = "\n".join(f"- *{label}*: {why}." for _, label, why in HEADLINE_ROWS)
    return "## Headline\n\n" + _table(header, rows) + "\n\n" + notes


def _topic_tables(metrics: dict[str, Any]) -> str:
    model, base = metrics["model_scores"]["topics"], (metrics.get("baseline_scores") or {}).get("topics")
    rows, rows2 = [], []
    for t, e in model.items():
        b = base[t] if base else None
        row = [f"`{t}`", str(e["support"]), f"{e['threshold']:.2f}", _num(e["precision"]), _num(e["recall"]), _with_ci(e["f1"], e["f1_ci95"])]
        if b:
            row += [_num(b["precision"]), _num(b["recall"]), _with_ci(b["f1"], b["f1_ci95"])]
        rows.append(row)
        row2 = [f"`{t}`", _num(e["pr_auc"])] + ([_num(b["pr_auc"])] if b else []) + [_num(e["f1_at_0.5"])] + ([_num(b["f1_at_0.5"])] if b else [])
        row2 += [str(e["article_support"]), _num(e["article_f1"])] + ([_num(b["article_f1"])] if b else [])
        rows2.append(row2)
    header = ["topic", "support", "threshold", "P", "R", "F1 [95% CI]"] + (["baseline P", "baseline R", "baseline F1 [95% CI]"] if base else [])
    header2 = (["topic", "PR-AUC"] + (["baseline"] if base else []) + ["F1 at 0.5"] + (["baseline"] if base else [])
               + ["articles with it", "article F1"] + (["baseline"] if base else []))
    return "\n\n".join([
        "## Topics", "Support: gold sentences with the topic. F1 at the model's tuned threshold (the baseline's own, tuned the same way).",
        _table(header, rows),
        "Threshold-free and article-level views: PR-AUC (average precision), F1 with every threshold at 0.5, and F1 at "
        "article level (an article has a topic if any sentence has it).",
        _table(header2, rows2),
        "![Per-topic F1 with 95% intervals](topic_f1.png)", f"*{PLOTS[0][1]}*",
        "![Precision-recall curves per topic](pr_curves.png)", f"*{PLOTS[1][1]}*",
    ])


def _stance_table(metrics: dict[str, Any]) -> str:
    model, base = metrics["model_scores"]["stances"], (metrics.get("baseline_scores") or {}).get("stances")
    rows = []
    for s, e in model.items():
        row = [f"`{s}`", str(e["support"]), _num(e["precision"]), _num(e["recall"]), _with_ci(e["f1"], e["f1_ci95"])]
        if base:
            b = base[s]
            row += [_num(b["precision"]), _num(b["recall"]), _with_ci(b["f1"], b["f1_ci95"])]
        rows.append(row)
    header = ["stance", "support", "P", "R", "F1 [95% CI]"] + (["baseline P", "baseline R", "baseline F1 [95% CI]"] if base else [])
    return "\n\n".join(["## Stance toward China", _table(header, rows),
                        "![Stance confusion matrix](stance_confusion.png)", f"*{PLOTS[2][1]}*"])


def _language_table(metrics: dict[str, Any]) -> str:
    model, base = metrics["model_languages"], metrics.get("baseline_languages")
    rows = []
    for lang, e in model.items():
        row = [lang, str(e["n_articles"]), str(e["n_sentences"]), _with_ci(e["topic_macro_f1"], e["ci95"]["topic_macro_f1"])]
        row += [_with_ci(base[lang]["topic_macro_f1"], base[lang]["ci95"]["topic_macro_f1"])] if base else []
        row += [_with_ci(e["stance_macro_f1"], e["ci95"]["stance_macro_f1"])]
        row += [_with_ci(base[lang]["stance_macro_f1"], base[lang]["ci95"]["stance_macro_f1"])] if base else []
        rows.append(row)
    header = (["language", "articles", "sentences", "topic macro-F1"] + (["baseline"] if base else []) + ["stance macro-F1"]
              + (["baseline"] if base else []))
    return "\n\n".join(["## By language", "Few articles per language: read the intervals before the points.",
                        _table(header, rows), "![F1 per language](languages.png)", f"*{PLOTS[3][1]}*"])


def _hard_cases(metrics: dict[str, Any]) -> str:
    model, base = metrics["model_slices"], metrics.get("baseline_slices")
    rows = []
    for name, values in model.items():
        if not name.startswith("hard_case/"):
            continue
        for key, value in values.items():
            if key != "n":
                rows.append([f"`{name[10:]}`", str(values["n"]), key.replace("_", " "), _num(value)] + ([_num(base[name][key])] if base else []))
    if not rows:
        return "## Hard cases\n\nThe evaluated data marks no hard cases (`hard_case` field)."
    return "\n\n".join([
        "## Hard cases",
        "Sentences the corpus marks: `other_sense` (a topic word in another sense), `china_offtopic` (China mentioned, no "
        "topic), `implicit` (stance or topic clear only from context). Spurious topic rate: share of these sentences given a "
        "topic gold does not have (lower is better).",
        _table(["hard case", "sentences", "figure", "model"] + (["baseline"] if base else []), rows)])


def _calibration(metrics: dict[str, Any]) -> str:
    return "\n\n".join([
        "## Calibration",
        "Can a score be read as a probability? Expected calibration error (ECE) is the bin-size-weighted mean gap between "
        "predicted probability and observed frequency (0 is perfect). Topic thresholds are tuned, so a poorly calibrated "
        "model can still decide well; but a user who filters on a score needs calibration.",
        "![Reliability diagram](reliability.png)", f"*{PLOTS[4][1]}*"])


def render_markdown(evaluation: Evaluation) -> str:
    m = evaluation.metrics
    data = f"all of {', '.join(m['sources'])}" if m["split"] == "all" else f"the {m['split']} split of {', '.join(m['sources'])}"
    title = f"# Evaluation of `{Path(m['model']).parent.name}/{Path(m['model']).name}` on {data}"
    files = ("## Files\n\n- `metrics.json`: every figure above, with intervals, and the calibration bins.\n"
             "- `predictions.jsonl`: one row per sentence (ids, language, text, gold, the model's and the baseline's "
             "predictions and scores), to recompute or re-slice any figure.\n- the plots (`*.png`).")
    sections = [title, _warnings(m), _what_was_evaluated(evaluation), _headline(m), _topic_tables(m), _stance_table(m),
                _language_table(m), _hard_cases(m), _calibration(m), error_analysis(evaluation), files]
    return "\n\n".join(s.strip() for s in sections if s.strip()) + "\n"


def write_report(evaluation: Evaluation, folder: str | Path) -> Path:
    """Write the report folder (replacing an older one of the same name); returns the path of report.md."""
    final = Path(folder)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_plots(evaluation, tmp)
    (tmp / "metrics.json").write_text(json.dumps(evaluation.metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    rows = prediction_rows(evaluation)
    (tmp / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (tmp / "report.md").write_text(render_markdown(evaluation), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final / "report.md"
