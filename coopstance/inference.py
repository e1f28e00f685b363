"""Tag articles with an exported coopstance model: sentence segmentation, batched tagging, JSON rows.

    from coopstance import Tagger
    tagger = Tagger("outputs/mbert/model")                      # or backend="onnx" / "onnx-int8" after export-onnx
    for s in tagger.tag_article(open("article.txt", encoding="utf-8").read()): print(s.stance, s.topics, s.text)

    from coopstance.inference import Article
    for result in tagger.tag_articles(Article(id=str(i), text=t) for i, t in enumerate(texts)):
        rows = result.records()

This module is the whole public inference API: `coopstance predict`, the HTTP service and bulk tagging use only it,
and it never imports `coopstance.training`. The exported folder is a plain transformers checkpoint; everything the
tagger needs (label names, topic thresholds, context size, label definitions, the TF-IDF blend weights and the score
calibration) is read from its config.json.

Output rows (`ArticleResult.records()`), the format of `coopstance predict --format jsonl` and of the service and bulk
tagger; these field names are stable. Scores are probabilities (calibrated on dev where the model stores a calibration)
rounded to 4 decimals.

One row per sentence, in reading order:
    type            "sentence"
    article_id      the `Article.id`
    sentence_index  0-based position of the sentence in the article
    start, end      character offsets into `Article.text`: `text[start:end] == row["text"]` (Python str indices,
                    i.e. Unicode code points; for pre-split input, offsets into the sentences joined by one space)
    text            the sentence
    topics          topic ids whose probability reaches the topic's tuned threshold (0..n), in label order
    stance          the most probable stance id (exactly one)
    topic_scores    {topic id: probability}
    stance_scores   {stance id: probability}, summing to 1
    truncated       true when the sentence had more tokens than the model takes (`max_seq_length`): it was tagged
                    on its first tokens only

Then one summary row per article:
    type                    "article"
    article_id              the `Article.id`
    lang                    the language used for segmentation (given, or detected from the script)
    n_sentences             number of sentence rows
    n_truncated             how many of them were truncated
    topic_shares            {topic id: share of the sentences tagged with it}
    stance_distribution     {stance id: share of the sentences with that stance}, summing to 1 (all 0 when empty)
    top_sentence_per_topic  {topic id: {"sentence_index", "score", "text"}}: the most confident sentence, for each
                            topic that at least one sentence is tagged with
    meta                    the `Article.meta` passed in, unchanged
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coopstance.calibration import Calibration
from coopstance.data import context_pair, uses_context
from coopstance.labels import DEFAULT_LABELS_FILE, LabelSchema, load_schema
from coopstance.metrics import DEFAULT_THRESHOLD, sigmoid, softmax

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
# Sentences are sorted by token length within a window of this many batches, so a batch holds sentences of similar
# length and little padding; a window spans articles, and results still come back in input order.
SORT_WINDOW_BATCHES = 8
SCORE_DECIMALS = 4


# ---------------------------------------------------------------------------------------------------------------
# Sentence segmentation: sentencex (Wikimedia), line by line, plus fix-ups where tests show it wrong.


@dataclass(frozen=True)
class Span:
    """One sentence of a text: `text[start:end] == span.text` (no leading or trailing whitespace)."""

    text: str
    start: int
    end: int


_SCRIPT_LANGS = (  # (first code point, last code point, language) for scripts that name one language
    (0x3040, 0x30FF, "ja"), (0x31F0, 0x31FF, "ja"),  # kana
    (0xAC00, 0xD7AF, "ko"), (0x1100, 0x11FF, "ko"), (0x3130, 0x318F, "ko"),  # hangul
    (0x0400, 0x04FF, "ru"), (0x0600, 0x06FF, "ar"), (0x0370, 0x03FF, "el"), (0x0590, 0x05FF, "he"),
    (0x0900, 0x097F, "hi"), (0x0E00, 0x0E7F, "th"),
)
_HAN = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))
# A handful of frequent function words tells the Latin-script languages of the corpus (and Spanish) apart.
_STOPWORDS = {
    "de": {"der", "die", "das", "und", "ist", "nicht", "mit", "den", "von", "zu", "sich", "auf", "für", "ein", "eine", "dem", "des"},
    "en": {"the", "and", "is", "of", "to", "in", "that", "for", "with", "on", "was", "are", "by", "it", "as", "from"},
    "fr": {"le", "la", "les", "et", "des", "est", "une", "dans", "que", "pour", "qui", "du", "sur", "au", "pas", "avec"},
    "es": {"el", "la", "los", "las", "y", "es", "una", "en", "que", "para", "del", "por", "con", "se", "su", "como"},
}
_WORD = re.compile(r"[^\W\d_]+")


def detect_language(text: str) -> str:
    """ISO 639-1 code guessed cheaply from the script (kana: ja, hangul: ko, Han alone: zh, ...) and, for Latin
    script, from frequent function words of de, en, fr, es; "en" when nothing decides."""
    sample = text[:4000]
    counts: dict[str, int] = {}
    han = 0
    for ch in sample:
        code = ord(ch)
        if any(lo <= code <= hi for lo, hi in _HAN):
            han += 1
            continue
        for lo, hi, lang in _SCRIPT_LANGS:
            if lo <= code <= hi:
                counts[lang] = counts.get(lang, 0) + 1
                break
    if counts.get("ja"):  # Japanese mixes kana into Han; Chinese has none
        return "ja"
    if counts:
        best = max(counts, key=lambda k: counts[k])
        if counts[best] >= han:
            return best
    if han:
        return "zh"
    words = [w.lower() for w in _WORD.findall(sample)]
    votes = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(votes, key=lambda k: votes[k])
    return best if votes[best] > 0 else "en"


# Titles are never the last word of a sentence; sentencex splits after some of them (fr "M. Macron", "Le Dr. House").
_TITLES = {"M.", "MM.", "Mme.", "Mlle.", "Dr.", "Prof.", "Pr.", "Me.", "Mr.", "Mrs.", "Ms.", "St.", "Sr.", "Sra.", "Hr.", "Fr."}
_CJK_OPEN_QUOTE, _CJK_CLOSE_QUOTE = "「『“‘", "」』”’"
_GERMAN_ORDINAL = re.compile(r"(?:^|\s)\d{1,3}\.$")  # "dem 50. Jahrestag"
_NUMBERS_ONLY = re.compile(r"(?:[0-9０-９]{1,4}[.．]\s*)+")  # a list number or a date written "2025. 3. 18." is no sentence


def _merge_into_previous(previous: Span, current: Span, lang: str) -> bool:
    last_word = previous.text.rsplit(maxsplit=1)[-1]
    if last_word in _TITLES or _NUMBERS_ONLY.fullmatch(previous.text):
        return True
    if lang == "de" and _GERMAN_ORDINAL.search(previous.text) and current.text[:1].isalpha():
        return True
    if lang in ("zh", "ja") and previous.text[-1:] in _CJK_CLOSE_QUOTE:
        # A quotation followed by its attribution is one sentence: “……。”她说。 / 「……。」と述べた。
        if lang == "ja" and current.text.startswith(("と", "って", "との")):
            return True
        if lang == "zh" and _is_one_quotation(previous.text) and current.text[0] not in _CJK_OPEN_QUOTE:
            return True
    return False


def _is_one_quotation(text: str) -> bool:
    """True for “……” as a whole: opens with a quote that closes only at the last character."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch in _CJK_OPEN_QUOTE
        depth -= ch in _CJK_CLOSE_QUOTE
        if depth <= 0:
            return i == len(text) - 1 and i > 0
    return False


def _split_cjk_full_stops(span: Span) -> list[Span]:
    """Split after 。！？ (and closing quotes) outside quotations and brackets: sentencex misses some ("。2025年…")."""
    cuts, depth = [], 0
    for i, ch in enumerate(span.text):
        if ch in _CJK_OPEN_QUOTE or ch in "（(":
            depth += 1
        elif ch in _CJK_CLOSE_QUOTE or ch in "）)":
            depth = max(0, depth - 1)
        if depth == 0 and i + 1 < len(span.text) and (ch in "。！？" or ch in _CJK_CLOSE_QUOTE and span.text[i - 1:i] in "。！？"):
            if span.text[i + 1] not in _CJK_CLOSE_QUOTE + "）)。！？":
                cuts.append(i + 1)
    out, start = [], 0
    for end in [*cuts, len(span.text)]:
        piece = span.text[start:end]
        stripped = piece.strip()
        if stripped:
            offset = span.start + start + (len(piece) - len(piece.lstrip()))
            out.append(Span(stripped, offset, offset + len(stripped)))
        start = end
    return out


def segment(text: str, lang: str | None = None) -> list[Span]:
    """Split an article into sentences with exact character offsets into `text`.

    Line breaks always end a sentence (headlines, bylines and datelines carry no full stop); within a line,
    sentencex (https://github.com/wikimedia/sentencex) splits for `lang` (ISO 639-1, detected from the script when
    None), and a few fix-ups merge or split where our tests showed it wrong (titles such as "M." and "Dr.", German
    ordinals, list numbers and dates such as "2025. 3. 18.", CJK full stops before digits, CJK quotations with their
    attribution).
    """
    from sentencex import get_sentence_boundaries

    lang = (lang or "").strip().lower()[:2] or detect_language(text)
    spans: list[Span] = []
    for line in re.finditer(r"[^\r\n\u2028\u2029\x0b\x0c\x1c-\x1e\x85]+", text):
        line_spans: list[Span] = []
        for boundary in get_sentence_boundaries(lang, line.group()):
            piece = boundary["text"]
            stripped = piece.strip()
            if not stripped:
                continue
            start = line.start() + boundary["start_index"] + (len(piece) - len(piece.lstrip()))
            candidates = [Span(stripped, start, start + len(stripped))]
            if lang in ("zh", "ja"):
                candidates = _split_cjk_full_stops(candidates[0])
            for span in candidates:
                if line_spans and _merge_into_previous(line_spans[-1], span, lang):
                    previous = line_spans.pop()
                    span = Span(text[previous.start:span.end], previous.start, span.end)
                line_spans.append(span)
        spans += line_spans
    return spans


def split_sentences(text: str, lang: str | None = None) -> list[str]:
    """The sentence texts of `segment(text, lang)`."""
    return [span.text for span in segment(text, lang)]


# ---------------------------------------------------------------------------------------------------------------
# Inputs and results.


@dataclass
class Article:
    """One article to tag. `sentences`, when given, is used as the segmentation (pre-split input); `text` is then
    ignored and rebuilt as the sentences joined by one space, so that offsets still index into it."""

    id: str
    text: str
    lang: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    sentences: list[str] | None = None


@dataclass
class SentenceTags:
    text: str
    topics: list[str]
    stance: str
    topic_scores: dict[str, float]
    stance_scores: dict[str, float]
    start: int = 0
    end: int = 0
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ArticleResult:
    article: Article
    lang: str
    sentences: list[SentenceTags]

    def records(self) -> list[dict[str, Any]]:
        """The sentence rows, then the article summary row (fields in the module docstring)."""
        article_id = self.article.id
        rows: list[dict[str, Any]] = [
            {
                "type": "sentence", "article_id": article_id, "sentence_index": i, "start": s.start, "end": s.end,
                "text": s.text, "topics": s.topics, "stance": s.stance, "topic_scores": s.topic_scores,
                "stance_scores": s.stance_scores, "truncated": s.truncated,
            }
            for i, s in enumerate(self.sentences)
        ]
        return rows + [self.summary()]

    def summary(self) -> dict[str, Any]:
        n = len(self.sentences)
        topic_names = list(self.sentences[0].topic_scores) if self.sentences else []
        stance_names = list(self.sentences[0].stance_scores) if self.sentences else []
        top: dict[str, dict[str, Any]] = {}
        for topic in topic_names:
            tagged = [(s.topic_scores[topic], i) for i, s in enumerate(self.sentences) if topic in s.topics]
            if tagged:
                score, i = max(tagged)
                top[topic] = {"sentence_index": i, "score": score, "text": self.sentences[i].text}
        return {
            "type": "article", "article_id": self.article.id, "lang": self.lang, "n_sentences": n,
            "n_truncated": sum(s.truncated for s in self.sentences),
            "topic_shares": {t: round(sum(t in s.topics for s in self.sentences) / n, SCORE_DECIMALS) if n else 0.0 for t in topic_names},
            "stance_distribution": {
                c: round(sum(s.stance == c for s in self.sentences) / n, SCORE_DECIMALS) if n else 0.0 for c in stance_names
            },
            "top_sentence_per_topic": top,
            "meta": self.article.meta,
        }


# ---------------------------------------------------------------------------------------------------------------
# The tagger.


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota (containers) if there is one."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


@dataclass
class _Item:
    """One sentence waiting for the model: its encoded input, and whether the sentence had to be cut to fit."""

    encoding: dict[str, list[int]]
    truncated: bool


class Tagger:
    """Loads an exported model folder and tags sentences, using the neighbouring sentences as context.

    backend: "torch" (the checkpoint), "onnx" (`model.onnx`) or "onnx-int8" (`model.int8.onnx`), both written by
    `coopstance export-onnx --model DIR [--int8]` and run with ONNX Runtime on CPU.
    num_threads: CPU threads for the model; default: the CPUs available to this process (affinity and cgroup
    quota), since the libraries' defaults count the host's cores in a container. For torch this sets the
    process-wide `torch.set_num_threads`.
    """

    def __init__(
        self, model_dir: str | Path, backend: str = "torch", device: str | None = None, batch_size: int = 32,
        num_threads: int | None = None,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: no exported model here (config.json missing). Train one with `make train` "
                "(or `make demo`), then pass <run folder>/model."
            )
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
        config = AutoConfig.from_pretrained(path)
        try:
            self.schema = LabelSchema.from_id2label(config.id2label)
        except ValueError as err:
            raise ValueError(
                f"{path / 'config.json'}: no coopstance label metadata ({err}). Pass the model/ folder of a coopstance "
                "run (`make train` writes it), not a base encoder."
            ) from None
        self.model_dir = path
        self.backend = backend
        self.batch_size = batch_size
        self.num_threads = num_threads or available_cpus()
        thresholds = getattr(config, "topic_thresholds", None) or {}
        self.thresholds = np.array([thresholds.get(t, DEFAULT_THRESHOLD) for t in self.schema.topics])
        self.context_sentences = int(getattr(config, "context_sentences", 0) or 0)
        self.context_headline = bool(getattr(config, "context_headline", False))
        self.max_length = int(getattr(config, "max_seq_length", 128) or 128)
        self.label_descriptions: dict[str, str] = dict(getattr(config, "label_descriptions", None) or {})
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.input_names = [n for n in self.tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.second_opinion = self._load_second_opinion(getattr(config, "second_opinion", None))
        spec = getattr(config, "calibration", None)
        self.calibration = Calibration.from_dict(spec, str(path / "config.json")) if spec else None
        if backend == "torch":
            self._init_torch(config, device)
        else:
            self._init_onnx(path / ONNX_FILES[backend])

    def _load_second_opinion(self, spec: dict[str, Any] | None) -> tuple[Any, float, float] | None:
        """The TF-IDF model exported beside the encoder (`train.tfidf_second_opinion`) and its blend weights, if any."""
        if not spec or not (spec.get("topic_weight") or spec.get("stance_weight")):
            return None
        from coopstance.baseline import SECOND_OPINION_FOLDER, TfidfBaseline

        tfidf = TfidfBaseline.load(self.model_dir / spec.get("folder", SECOND_OPINION_FOLDER), self.schema)
        return tfidf, float(spec.get("topic_weight", 0.0)), float(spec.get("stance_weight", 0.0))

    def _init_torch(self, config: Any, device: str | None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            torch.set_num_threads(self.num_threads)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir, config=config).to(self.device).eval()

    def _init_onnx(self, onnx_path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("backend 'onnx' needs onnxruntime: pip install onnxruntime") from None
        if not onnx_path.is_file():
            flag = " --int8" if self.backend == "onnx-int8" else ""
            raise FileNotFoundError(f"{onnx_path}: not found; export it first: coopstance export-onnx --model {self.model_dir}{flag}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.session_inputs = [i.name for i in self.session.get_inputs()]

    # -- model calls ---------------------------------------------------------------------------------------------

    def label_info(self) -> dict[str, Any]:
        """Labels with their definitions and thresholds, and the input settings (for the service's `GET /v1/labels`).

        Definitions come from the model's config (`label_descriptions`, written at export) or, for older exports,
        from configs/labels.yaml when its labels are the model's; else they are empty strings."""
        descriptions = self.label_descriptions
        if not descriptions and DEFAULT_LABELS_FILE.is_file():
            repo_schema = load_schema(DEFAULT_LABELS_FILE)
            if (repo_schema.topics, repo_schema.stances) == (self.schema.topics, self.schema.stances):
                descriptions = repo_schema.descriptions
        return {
            "topics": [
                {"id": t, "definition": descriptions.get(t, ""), "threshold": round(float(th), SCORE_DECIMALS)}
                for t, th in zip(self.schema.topics, self.thresholds)
            ],
            "stances": [{"id": s, "definition": descriptions.get(s, "")} for s in self.schema.stances],
            "context_sentences": self.context_sentences,
            "context_headline": self.context_headline,
            "max_seq_length": self.max_length,
            "second_opinion": {"kind": "tfidf", "topic_weight": self.second_opinion[1], "stance_weight": self.second_opinion[2]}
            if self.second_opinion else None,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "backend": self.backend,
        }

    def _encode(self, texts: list[str], pairs: list[str | None]) -> list[tuple[dict[str, list[int]], bool]]:
        """Token ids per sentence (+ context segment), truncated to max_length, with a flag for a cut sentence."""
        second = pairs if uses_context(self.context_sentences, self.context_headline) else None
        batch = self.tokenizer(texts, second, truncation=True, max_length=self.max_length)
        out = []
        full_length_rows = [i for i, ids in enumerate(batch["input_ids"]) if len(ids) >= self.max_length]
        cut: set[int] = set()
        if full_length_rows:  # only inputs at the limit can have lost tokens of the sentence itself
            alone = self.tokenizer([texts[i] for i in full_length_rows], add_special_tokens=False)["input_ids"]
            for i, ids in zip(full_length_rows, alone):
                kept = sum(1 for s in batch.sequence_ids(i) if s == 0)
                if kept < len(ids):
                    cut.add(i)
        for i in range(len(texts)):
            out.append(({name: batch[name][i] for name in self.input_names if name in batch}, i in cut))
        return out

    def _pad(self, encodings: list[dict[str, list[int]]]) -> dict[str, np.ndarray]:
        width = max(len(e["input_ids"]) for e in encodings)
        arrays = {}
        for name in encodings[0]:
            fill = self.pad_id if name == "input_ids" else 0
            array = np.full((len(encodings), width), fill, dtype=np.int64)
            for row, e in enumerate(encodings):
                values = e[name]
                if self.tokenizer.padding_side == "left":
                    array[row, width - len(values):] = values
                else:
                    array[row, :len(values)] = values
            arrays[name] = array
        return arrays

    def _forward(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.backend == "torch":
            import torch

            with torch.inference_mode():
                tensors = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
                return self.model(**tensors).logits.float().cpu().numpy()
        feed = {name: inputs[name] for name in self.session_inputs}
        return self.session.run(None, feed)[0]

    def _run_items(self, items: list[_Item]) -> np.ndarray:
        """Logits for `items` (row-aligned), batched in order of token length."""
        logits = np.zeros((len(items), self.schema.num_labels), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: len(items[i].encoding["input_ids"]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            logits[rows] = self._forward(self._pad([items[i].encoding for i in rows]))
        return logits

    def _items_for(self, sentences: list[str]) -> list[_Item]:
        if not sentences:
            return []
        pairs = [context_pair(sentences, i, self.context_sentences, self.context_headline) for i in range(len(sentences))]
        encoded = self._encode(sentences, pairs)
        return [_Item(enc, cut) for enc, cut in encoded]

    def logits(self, sentences: list[str]) -> np.ndarray:
        """The encoder's raw logits `[n, topics + stances]` for the sentences of one article, in order (before any TF-IDF
        second opinion: the tags and scores blend it in)."""
        if not sentences:
            return np.zeros((0, self.schema.num_labels), dtype=np.float32)
        return self._run_items(self._items_for(sentences))

    def _tags(self, spans: list[Span], logits: np.ndarray, truncated: list[bool]) -> list[SentenceTags]:
        topic_probs = sigmoid(logits[:, :self.schema.num_topics])
        stance_probs = softmax(logits[:, self.schema.num_topics:])
        if self.second_opinion is not None and spans:  # as evaluated at export: (1 - w) * encoder + w * TF-IDF
            from coopstance.baseline import blend

            tfidf, topic_weight, stance_weight = self.second_opinion
            topic_probs, stance_probs = blend((topic_probs, stance_probs), tfidf.scores([s.text for s in spans]), topic_weight, stance_weight)
        if self.calibration is not None:  # monotone maps fitted on dev at export; the thresholds are for calibrated scores
            topic_probs, stance_probs = self.calibration.apply(topic_probs, stance_probs)
        tags = []
        for span, tp, sp, cut in zip(spans, topic_probs, stance_probs, truncated):
            tags.append(SentenceTags(
                text=span.text,
                topics=[t for t, p, th in zip(self.schema.topics, tp, self.thresholds) if p >= th],
                stance=self.schema.stances[int(sp.argmax())],
                topic_scores={t: round(float(p), SCORE_DECIMALS) for t, p in zip(self.schema.topics, tp)},
                stance_scores={s: round(float(p), SCORE_DECIMALS) for s, p in zip(self.schema.stances, sp)},
                start=span.start, end=span.end, truncated=cut,
            ))
        return tags

    # -- public tagging ------------------------------------------------------------------------------------------

    def tag_articles(self, articles: Iterable[Article]) -> Iterator[ArticleResult]:
        """Tag a stream of articles, batching sentences across articles; results come back in input order.

        Each article is segmented (or taken as pre-split when `Article.sentences` is set); an article without any
        sentence gives a result with no sentences (its summary row says n_sentences 0) rather than an error, so
        that one empty record does not stop a long stream."""
        window = self.batch_size * SORT_WINDOW_BATCHES
        pending: list[tuple[Article, str, list[Span]]] = []
        items: list[_Item] = []
        for article in articles:
            lang, spans = self._segment_article(article)
            items += self._items_for([s.text for s in spans])
            pending.append((article, lang, spans))
            if len(items) >= window:
                yield from self._finish(pending, items)
                pending, items = [], []
        if pending:
            yield from self._finish(pending, items)

    def _segment_article(self, article: Article) -> tuple[str, list[Span]]:
        if article.sentences is not None:
            for i, s in enumerate(article.sentences):
                if not isinstance(s, str) or not s.strip():
                    raise ValueError(f"article {article.id!r}: sentence {i} is empty; pass non-empty strings")
            spans, offset = [], 0
            for s in article.sentences:
                spans.append(Span(s, offset, offset + len(s)))
                offset += len(s) + 1
            article.text = " ".join(article.sentences)
            return article.lang or detect_language(article.text), spans
        lang = (article.lang or "").strip().lower()[:2] or detect_language(article.text)
        return lang, segment(article.text, lang)

    def _finish(self, pending: list[tuple[Article, str, list[Span]]], items: list[_Item]) -> Iterator[ArticleResult]:
        logits = self._run_items(items) if items else np.zeros((0, self.schema.num_labels), dtype=np.float32)
        row = 0
        for article, lang, spans in pending:
            n = len(spans)
            truncated = [item.truncated for item in items[row:row + n]]
            yield ArticleResult(article, lang, self._tags(spans, logits[row:row + n], truncated))
            row += n

    def tag_sentences(self, sentences: list[str]) -> list[SentenceTags]:
        """Tag the sentences of one article (in reading order, so context is right)."""
        for i, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"sentence {i} is empty; pass non-empty strings (or use tag_article on raw text)")
        return next(self.tag_articles([Article(id="0", text="", sentences=list(sentences))])).sentences

    def tag_article(self, text: str, lang: str | None = None) -> list[SentenceTags]:
        """Split raw article text into sentences and tag each."""
        result = next(self.tag_articles([Article(id="0", text=text, lang=lang)]))
        if not result.sentences:
            raise ValueError("the article is empty")
        return result.sentences
