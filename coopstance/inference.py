"""Tag sentences or whole articles with an exported coopstance model.

    from coopstance import Tagger
    tagger = Tagger("outputs/mbert/model")
    tags = tagger.tag_article(open("article.txt", encoding="utf-8").read())

The exported folder is a plain transformers checkpoint; everything the tagger needs (label names, topic
thresholds, context size) is read from its config.json, not from this repository.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from coopstance.data import context_pair
from coopstance.labels import LabelSchema
from coopstance.metrics import DEFAULT_THRESHOLD, sigmoid, softmax

# Sentence ends: Latin punctuation followed by space, or CJK full stops (no space needed). Abbreviations such as
# "U.S." or "Dr." are not sentence ends.
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "prof", "st", "nr", "no", "vs", "etc", "bzw", "z.b", "u.a", "inc", "corp", "co", "jan", "feb", "mme", "m"}
_LATIN_END = re.compile(r"(?<=[.!?…])[\"'»”“)\]]*\s+")
_CJK_END = re.compile(r"(?<=[。！？])[」』”’）)]*")


@dataclass
class SentenceTags:
    text: str
    topics: list[str]
    stance: str
    topic_scores: dict[str, float]
    stance_scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ends_with_abbreviation(candidate: str) -> bool:
    word = candidate.rsplit(maxsplit=1)[-1] if candidate.strip() else ""
    return (
        word.rstrip(".").lower() in _ABBREVIATIONS
        or re.fullmatch(r"(?:[A-Za-z]\.){2,}", word) is not None  # U.S., e.g.
        or re.fullmatch(r"[A-Z]\.", word) is not None  # initials: "Joe R. Biden"
    )


def split_sentences(text: str) -> list[str]:
    """Split an article into sentences: at line breaks first, then at sentence-final punctuation."""
    sentences: list[str] = []
    for block in re.split(r"\n+", text):
        for piece in _CJK_END.split(block):
            start = 0
            for match in _LATIN_END.finditer(piece):
                if _ends_with_abbreviation(piece[start:match.start()]):
                    continue
                sentences.append(piece[start:match.end()].strip())
                start = match.end()
            sentences.append(piece[start:].strip())
    return [s for s in sentences if s]


class Tagger:
    """Loads an exported model folder and tags sentences, using the neighbouring sentences as context."""

    def __init__(self, model_dir: str | Path, device: str | None = None, batch_size: int = 32) -> None:
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: no exported model here (config.json missing). Train one with `make train` "
                "(or `make demo`), then pass <run folder>/model."
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        config = self.model.config
        self.schema = LabelSchema.from_id2label(config.id2label)
        thresholds = getattr(config, "topic_thresholds", None) or {}
        self.thresholds = np.array([thresholds.get(t, DEFAULT_THRESHOLD) for t in self.schema.topics])
        self.context_sentences = int(getattr(config, "context_sentences", 0) or 0)
        self.max_length = int(getattr(config, "max_seq_length", 128) or 128)
        self.batch_size = batch_size

    @torch.inference_mode()
    def logits(self, sentences: list[str]) -> np.ndarray:
        """Raw logits `[n, topics + stances]` for the sentences of one article, in order."""
        pairs = [context_pair(sentences, i, self.context_sentences) for i in range(len(sentences))]
        out = []
        for start in range(0, len(sentences), self.batch_size):
            texts = sentences[start:start + self.batch_size]
            second = pairs[start:start + self.batch_size] if self.context_sentences else None
            batch = self.tokenizer(texts, second, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            out.append(self.model(**batch.to(self.device)).logits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.schema.num_labels), dtype=np.float32)

    def tag_sentences(self, sentences: list[str]) -> list[SentenceTags]:
        """Tag the sentences of one article (in reading order, so context is right)."""
        for i, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"sentence {i} is empty; pass non-empty strings (or use tag_article on raw text)")
        logits = self.logits(sentences)
        topic_probs = sigmoid(logits[:, :self.schema.num_topics])
        stance_probs = softmax(logits[:, self.schema.num_topics:])
        tags = []
        for text, tp, sp in zip(sentences, topic_probs, stance_probs):
            tags.append(SentenceTags(
                text=text,
                topics=[t for t, p, th in zip(self.schema.topics, tp, self.thresholds) if p >= th],
                stance=self.schema.stances[int(sp.argmax())],
                topic_scores={t: round(float(p), 4) for t, p in zip(self.schema.topics, tp)},
                stance_scores={s: round(float(p), 4) for s, p in zip(self.schema.stances, sp)},
            ))
        return tags

    def tag_article(self, text: str) -> list[SentenceTags]:
        """Split raw article text into sentences and tag each."""
        sentences = split_sentences(text)
        if not sentences:
            raise ValueError("the article is empty")
        return self.tag_sentences(sentences)
