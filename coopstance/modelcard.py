"""The model card: `README.md` in the exported model folder, in the Hugging Face convention (YAML front matter with
`model-index`, then prose). Written at export from the training run's test scores, and refreshed by `make evaluate`
on the model's own test split with the fuller figures of the evaluation report (PR-AUC, article-level F1, calibration).

Everything else the card says is read from the model folder itself (config.json, training_config.yaml), so the
card describes the folder it sits in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from coopstance.config import TINY_MODEL, resolve_path
from coopstance.data import Record
from coopstance.labels import LabelSchema, load_schema
from coopstance.utils import atomic_write_text

CARD_FILE = "README.md"
LICENSE = "apache-2.0"
TAGS = ["coopstance", "text-classification", "multi-label-classification", "stance-detection", "news", "multilingual"]

# (key in the scores, name in the card, Hugging Face metric type)
CARD_FIGURES = (
    ("topic_macro_f1", "Topic macro-F1 (tuned thresholds)", "f1"),
    ("topic_micro_f1", "Topic micro-F1 (tuned thresholds)", "f1"),
    ("topic_macro_f1_at_0.5", "Topic macro-F1 at 0.5", "f1"),
    ("topic_macro_pr_auc", "Topic macro PR-AUC", "average_precision"),
    ("article_topic_macro_f1", "Article-level topic macro-F1", "f1"),
    ("topic_ece", "Topic expected calibration error", "ece"),
    ("stance_macro_f1", "Stance macro-F1", "f1"),
    ("stance_accuracy", "Stance accuracy", "accuracy"),
    ("stance_ece", "Stance expected calibration error", "ece"),
    ("china_stance_without_china_rate", "China stance given without China (share of gold none)", "error_rate"),
    ("china_stance_in_china_free_articles_rate", "China stance given in articles that never refer to China", "error_rate"),
)


def split_counts(splits: dict[str, list[Record]]) -> dict[str, dict[str, dict[str, int]]]:
    """split -> language -> {"articles", "sentences"}."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split, records in splits.items():
        per_lang: dict[str, dict[str, int]] = {}
        for lang in sorted({r.lang for r in records}):
            mine = [r for r in records if r.lang == lang]
            per_lang[lang] = {"articles": len({r.article_id for r in mine}), "sentences": len(mine)}
        out[split] = per_lang
    return out


def base_model(name_or_path: str | None) -> tuple[str | None, str]:
    """(hub id for the `base_model` field or None, a phrase saying what the encoder was)."""
    if not name_or_path:
        return None, "an unknown encoder"
    if name_or_path == TINY_MODEL:
        return None, "a tiny BERT initialised at random (the offline demo and test model; its scores are a smoke test, not a result)"
    folder = resolve_path(name_or_path, must_exist=False)
    if folder.is_dir():
        info = folder / "build_info.json"
        if info.is_file():
            hub = json.loads(info.read_text(encoding="utf-8")).get("hub_name")
            if hub:
                return hub, f"`{hub}`, rebuilt offline by `make encoder` into `{name_or_path}`"
        return None, f"the local encoder folder `{name_or_path}`"
    return name_or_path, f"`{name_or_path}`"


def _definitions(schema: LabelSchema, config: dict[str, Any], training: dict[str, Any]) -> dict[str, str]:
    saved = config.get("label_descriptions") or {}
    if saved:
        return {k.split("/", 1)[-1]: v for k, v in saved.items()}
    try:
        defined = load_schema(resolve_path(training.get("data", {}).get("labels_file", "configs/labels.yaml")))
        if defined.topics == schema.topics and defined.stances == schema.stances:
            return defined.descriptions
    except (FileNotFoundError, ValueError):
        pass
    return {}


def _value(scores: dict[str, Any], key: str) -> str:
    value = scores.get(key)
    if value is None:
        return "–"
    ci = (scores.get("ci95") or {}).get(key)
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _front_matter(run_name: str, languages: list[str], hub_base: str | None, scores: dict[str, Any]) -> str:
    def metrics(task: str) -> list[dict[str, Any]]:
        return [{"type": kind, "value": round(float(scores[key]), 4), "name": name}
                for key, name, kind in CARD_FIGURES if key.startswith(task) and scores.get(key) is not None]

    dataset = {"name": "coopstance corpus (held-out test articles)", "type": "coopstance", "split": "test"}
    meta: dict[str, Any] = {"language": languages, "license": LICENSE, "library_name": "transformers", "pipeline_tag": "text-classification",
                            "tags": TAGS}
    if hub_base:
        meta["base_model"] = hub_base
    meta["model-index"] = [{"name": run_name, "results": [
        {"task": {"type": "text-classification", "name": "Cooperation topics (multi-label)"}, "dataset": dict(dataset),
         "metrics": metrics("topic") + metrics("article_topic")},
        {"task": {"type": "text-classification", "name": "Stance toward China"}, "dataset": dict(dataset),
         "metrics": metrics("stance") + metrics("china_stance")},
    ]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def render_model_card(
    model_dir: Path, counts: dict[str, dict[str, dict[str, int]]], test_scores: dict[str, Any], baseline_scores: dict[str, Any] | None,
    evaluated_by: str,
) -> str:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    training_file = model_dir / "training_config.yaml"
    training = yaml.safe_load(training_file.read_text(encoding="utf-8")) if training_file.is_file() else {}
    schema = LabelSchema.from_id2label(config["id2label"])
    definitions = _definitions(schema, config, training)
    thresholds = config.get("topic_thresholds") or {}
    run_name = training.get("train", {}).get("run_name", model_dir.resolve().parent.name)
    hub_base, base_phrase = base_model(training.get("model", {}).get("name_or_path"))
    languages = sorted({lang for per_lang in counts.values() for lang in per_lang})
    context = int(config.get("context_sentences") or 0)
    opinion = config.get("second_opinion") or {}
    blend_note = (
        f"\n\nThe scores blend the encoder's probabilities with a character n-gram TF-IDF + logistic regression model stored in "
        f"`{opinion.get('folder', 'tfidf')}/` (TF-IDF weight {opinion.get('topic_weight')} for topics, {opinion.get('stance_weight')} for "
        "stance, chosen on dev; `train.tfidf_second_opinion`). `Tagger` applies the blend, and the figures below are for it."
    ) if opinion.get("topic_weight") or opinion.get("stance_weight") else ""
    calibration = config.get("calibration") or {}
    calibration_note = (
        f"\n\nThe scores are calibrated on dev (`train.calibrate`, `calibration` in `config.json`): topics map "
        f"p -> sigmoid({calibration.get('topic_scale')} * logit(p) + {calibration.get('topic_shift')}), stance probabilities take a "
        f"temperature of {calibration.get('stance_temperature')}. Both maps are monotone, so they change no tag; the thresholds "
        "are for calibrated scores."
    ) if calibration else ""
    plain_note = (" This gives the encoder alone, without the TF-IDF second opinion or the calibration; the thresholds were tuned "
                  "for the Tagger's final scores, so use `Tagger` for the evaluated tags.") if blend_note or calibration_note else ""
    data = training.get("data", {})
    train_args = training.get("train", {})

    label_rows = [f"| `{t}` | topic (0..n per sentence) | {definitions.get(t, '')} | {float(thresholds.get(t, 0.5)):.2f} |" for t in schema.topics]
    label_rows += [f"| `{s}` | stance toward China (exactly one) | {definitions.get(s, '')} | |" for s in schema.stances]
    split_rows = []
    for split in ("train", "dev", "test"):
        per_lang = counts.get(split, {})
        cells = [f"{per_lang[lang]['articles']} / {per_lang[lang]['sentences']}" if lang in per_lang else "–" for lang in languages]
        total = f"{sum(v['articles'] for v in per_lang.values())} / {sum(v['sentences'] for v in per_lang.values())}"
        split_rows.append(f"| {split} | " + " | ".join(cells) + f" | {total} |")
    figure_rows = [f"| {name} | {_value(test_scores, key)} | " + (_value(baseline_scores, key) if baseline_scores else "–") + " |"
                   for key, name, _ in CARD_FIGURES if test_scores.get(key) is not None]
    topic_rows = [f"| `{t}` | {e['support']} | {_value({'f1': e['f1'], 'ci95': {'f1': e.get('f1_ci95')}}, 'f1')} | "
                  + (f"{baseline_scores['topics'][t]['f1']:.3f}" if baseline_scores else "–") + " |"
                  for t, e in test_scores["topics"].items()]
    headline = bool(config.get("context_headline"))
    context_line = (f"The model reads each sentence with the {context} sentence(s) before and after it as a second segment "
                    "(`sentence`, `before [...] after`); `Tagger` builds that for you.") if context else "The model reads each sentence alone."
    if headline:
        context_line = (f"The model reads each sentence with a second segment: the article's first sentence (its headline), then "
                        f"the {context} sentence(s) before and after it (`headline [...] before [...] after`); `Tagger` builds that "
                        "for you.") if context else ("The model reads each sentence with its article's first sentence (its headline) "
                                                     "as a second segment; `Tagger` builds that for you.")

    body = f"""
# coopstance: `{run_name}`

Tags the sentences of news articles in {', '.join(languages)} with the **cooperation topics** they discuss (0 to
{schema.num_topics} of them) and the **stance toward China** they take (exactly one of {schema.num_stances}). Fine-tuned from
{base_phrase} with coopstance (`make train`). {context_line}

## Intended use and limits

- **For:** tagging news sentences for research on technology and trade cooperation, and counting topics and stances
  over many articles; finding sentences for a person to read.
- **Not for:** decisions about individual people or organisations, or any automated decision without a human check;
  text far from news writing (legal text, long reports, transcripts) without first evaluating on an annotated sample of it
  (`python eval/evaluate.py MODEL --sources your_sample.jsonl --split all`).
- **Limits:** the training corpus is small ({sum(v['articles'] for v in counts.get('train', {}).values())} training articles) and
  was written for the project (original, news-style text), so expect lower scores on real feeds. Per-language and
  per-topic figures rest on few test articles: read the intervals. Stance is toward China only; `confrontational`
  includes China's own countermeasures. Topic thresholds were tuned on a small dev split.

## Labels

| label | kind | definition | threshold |
|---|---|---|---:|
{chr(10).join(label_rows)}

A topic is predicted when its probability reaches the threshold (tuned per topic on dev, stored in `config.json` as
`topic_thresholds`); the stance is the most probable class.{blend_note}{calibration_note}

## Training data and split

Sources {', '.join(f'`{s}`' for s in data.get('sources', [])) or 'unknown'}, split by article with
`{data.get('splits_file', '?')}` (articles it does not list are split by a hash of their id). Articles / sentences:

| split | {' | '.join(languages)} | all |
|---|{'---:|' * (len(languages) + 1)}
{chr(10).join(split_rows)}

Settings: {train_args.get('epochs', '?')} epochs, learning rate {train_args.get('learning_rate', '?')}, batch size
{train_args.get('batch_size', '?')}, max length {config.get('max_seq_length', '?')} tokens, context {context}, seed {train_args.get('seed', '?')};
when training ran over more than one epoch, the best epoch on dev was kept. The full configuration is `training_config.yaml` in this folder.

## Evaluation

On the held-out test articles ({test_scores['n_articles']} articles, {test_scores['n_sentences']} sentences); 95% intervals
from a bootstrap over articles. The baseline is a character n-gram TF-IDF + logistic regression trained on the same
training split, its thresholds tuned on the same dev split. Figures from {evaluated_by}.

| figure | model [95% CI] | baseline [95% CI] |
|---|---:|---:|
{chr(10).join(figure_rows)}

| topic | test sentences | F1 [95% CI] | baseline F1 |
|---|---:|---:|---:|
{chr(10).join(topic_rows)}

## How to use

With coopstance installed:

```python
from coopstance import Tagger
tagger = Tagger("path/to/this/folder")
for s in tagger.tag_article(open("article.txt", encoding="utf-8").read()):
    print(s.stance, s.topics, s.text)
```

With plain `transformers`: the logits are `[topic logits | stance logits]`, the label names are in `config.id2label`
(`topic/<id>`, `stance/<id>`), the thresholds in `config.topic_thresholds`.{plain_note}

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tok = AutoTokenizer.from_pretrained("path/to/this/folder")
model = AutoModelForSequenceClassification.from_pretrained("path/to/this/folder").eval()
cfg = model.config
names = [cfg.id2label[i] for i in range(cfg.num_labels)]
n_topics = sum(n.startswith("topic/") for n in names)
with torch.inference_mode():
    logits = model(**tok(["Washington added 140 Chinese chip firms to the Entity List."], return_tensors="pt")).logits[0]
topics = [n[6:] for n, p in zip(names, torch.sigmoid(logits[:n_topics])) if p >= cfg.topic_thresholds[n[6:]]]
stance = names[n_topics + int(logits[n_topics:].argmax())][7:]
```

## License

Weights: {LICENSE} (the coopstance code licence); the training corpus is CC BY 4.0 (attribution: the coopstance
project); the base encoder keeps its own licence.
"""
    return _front_matter(run_name, languages, hub_base, test_scores) + body


def _flat_china_rates(scores: dict[str, Any]) -> dict[str, Any]:
    """Training's metrics.json keeps the no-China rates in one nested entry; the card reads evaluate's flat keys."""
    nested = scores.get("china_stance_without_china")
    if "china_stance_without_china_rate" in scores or not nested:
        return scores
    flat = {**scores, "china_stance_without_china_rate": nested["rate"]}
    if "in_china_free_articles" in nested:
        flat["china_stance_in_china_free_articles_rate"] = nested["in_china_free_articles"]["rate"]
    return flat


def write_model_card(
    model_dir: str | Path, splits: dict[str, list[Record]], test_scores: dict[str, Any], baseline_scores: dict[str, Any] | None,
    evaluated_by: str,
) -> Path:
    """Write (or replace) `<model_dir>/README.md`; `splits` are the model's own train/dev/test records."""
    model_dir = Path(model_dir)
    test_scores = _flat_china_rates(test_scores)
    baseline_scores = _flat_china_rates(baseline_scores) if baseline_scores else baseline_scores
    path = model_dir / CARD_FILE
    atomic_write_text(path, render_model_card(model_dir, split_counts(splits), test_scores, baseline_scores, evaluated_by))
    return path
