"""A simple, honest baseline reported beside the model: character n-gram TF-IDF + logistic regression.

Character n-grams need no word segmentation, so the same baseline works for German and for Japanese.
Topic thresholds are tuned on dev exactly as for the model, so the comparison is like for like.

The same model is also the encoder's *second opinion* (`train.tfidf_second_opinion`): its probabilities are averaged
with the encoder's, with weights chosen on dev (`choose_blend_weights`), and it travels inside the exported folder
(`save`/`load`: JSON and numpy arrays, no pickle) so that the Tagger gives exactly the scores that were evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from coopstance.data import Record, label_matrix
from coopstance.labels import LabelSchema
from coopstance.metrics import headline_scores, sigmoid, softmax, tune_thresholds
from coopstance.utils import atomic_write_text

VECTORIZER_SETTINGS = {"analyzer": "char_wb", "ngram_range": (2, 4), "sublinear_tf": True}
BLEND_GRID = np.round(np.arange(0.0, 0.91, 0.1), 2)  # weight of the TF-IDF probabilities; 0 = the encoder alone
SAVED_FORMAT = 1
SECOND_OPINION_FOLDER = "tfidf"  # inside an exported model folder


class TfidfBaseline:
    def __init__(self, schema: LabelSchema, seed: int = 0) -> None:
        self.schema = schema
        self.seed = seed
        self.vectorizer = TfidfVectorizer(**VECTORIZER_SETTINGS, min_df=2, max_features=50000)
        # Fitted weights as plain arrays (what save/load round-trip): per topic a logistic regression, or a constant
        # rate (nan = has a model) when train has the topic nowhere or everywhere; one multinomial stance model.
        self.topic_coef = self.topic_intercept = self.topic_constant = np.zeros(0)
        self.stance_coef = self.stance_intercept = np.zeros(0)
        self.stance_classes = np.zeros(0, dtype=int)
        self.thresholds = np.full(schema.num_topics, 0.5)

    def fit(self, train: list[Record], dev: list[Record]) -> TfidfBaseline:
        # One BLAS thread: the problems are small, and extra threads only contend for the cores (measured on 2 busy
        # cores: 9.3 s with 2 threads against 0.5 s with one for the stance model, same result).
        with threadpool_limits(1):
            return self._fit(train, dev)

    def _fit(self, train: list[Record], dev: list[Record]) -> TfidfBaseline:
        x = self.vectorizer.fit_transform([r.text for r in train])
        topics, stances = label_matrix(train, self.schema)
        y_topics = np.asarray(topics, dtype=int)
        self.topic_coef = np.zeros((self.schema.num_topics, x.shape[1]))
        self.topic_intercept = np.zeros(self.schema.num_topics)
        self.topic_constant = np.full(self.schema.num_topics, np.nan)
        for j in range(self.schema.num_topics):
            column = y_topics[:, j]
            if column.min() == column.max():  # a topic absent (or everywhere) in train: predict its rate
                self.topic_constant[j] = float(column[0])
                continue
            model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=self.seed).fit(x, column)
            self.topic_coef[j], self.topic_intercept[j] = model.coef_[0], model.intercept_[0]
        stance_model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=self.seed)
        stance_model.fit(x, np.asarray(stances))
        self.stance_coef, self.stance_intercept = stance_model.coef_, stance_model.intercept_
        self.stance_classes = stance_model.classes_.astype(int)
        dev_probs, _ = self.predict_proba(dev)
        self.thresholds = tune_thresholds(dev_probs, np.asarray(label_matrix(dev, self.schema)[0]))
        return self

    def scores(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Topic probabilities `[n, topics]` and stance probabilities `[n, stances]` (as sklearn's predict_proba)."""
        x = self.vectorizer.transform(texts)
        topic_probs = sigmoid(np.asarray(x @ self.topic_coef.T) + self.topic_intercept)
        constant = ~np.isnan(self.topic_constant)
        topic_probs[:, constant] = self.topic_constant[constant]
        stance_z = np.asarray(x @ self.stance_coef.T) + self.stance_intercept
        # sklearn's binary case (only two stances in train) has one weight row: P(second class) = sigmoid
        present = np.column_stack([1 - sigmoid(stance_z), sigmoid(stance_z)]) if self.stance_coef.shape[0] == 1 else softmax(stance_z)
        stance_probs = np.zeros((x.shape[0], self.schema.num_stances))
        stance_probs[:, self.stance_classes] = present
        return topic_probs, stance_probs

    def predict_proba(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
        return self.scores([r.text for r in records])

    def predict(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
        topic_probs, stance_probs = self.predict_proba(records)
        return topic_probs >= self.thresholds, stance_probs.argmax(1)

    # -- the exported copy ---------------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """`vectorizer.json` (settings, labels, the n-gram vocabulary in column order) and `weights.npz`."""
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            folder / "weights.npz", idf=self.vectorizer.idf_, topic_coef=self.topic_coef, topic_intercept=self.topic_intercept,
            topic_constant=self.topic_constant, stance_coef=self.stance_coef, stance_intercept=self.stance_intercept,
            stance_classes=self.stance_classes, thresholds=self.thresholds,
        )
        settings = {**VECTORIZER_SETTINGS, "ngram_range": list(VECTORIZER_SETTINGS["ngram_range"])}
        atomic_write_text(folder / "vectorizer.json", json.dumps({
            "format": SAVED_FORMAT, "model": "char 2-4-gram TF-IDF + logistic regression (coopstance.baseline)",
            "settings": settings, "topics": self.schema.topics, "stances": self.schema.stances,
            "vocabulary": self.vectorizer.get_feature_names_out().tolist(),
        }, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path, schema: LabelSchema) -> TfidfBaseline:
        spec_file, weights_file = folder / "vectorizer.json", folder / "weights.npz"
        for needed in (spec_file, weights_file):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed}: missing; the model folder names a TF-IDF second opinion here. Copy the "
                                        "whole model folder, or retrain with train.tfidf_second_opinion=false")
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        if spec.get("format") != SAVED_FORMAT or (spec["topics"], spec["stances"]) != (list(schema.topics), list(schema.stances)):
            raise ValueError(f"{spec_file}: written for other labels or by another coopstance version; re-export the model")
        baseline = cls(schema)
        settings = {**spec["settings"], "ngram_range": tuple(spec["settings"]["ngram_range"])}
        baseline.vectorizer = TfidfVectorizer(**settings, vocabulary=spec["vocabulary"])
        with np.load(weights_file) as weights:
            baseline.vectorizer.idf_ = weights["idf"]
            for name in ("topic_coef", "topic_intercept", "topic_constant", "stance_coef", "stance_intercept", "stance_classes",
                         "thresholds"):
                setattr(baseline, name, weights[name])
        return baseline


def blend(encoder: tuple[np.ndarray, np.ndarray], tfidf: tuple[np.ndarray, np.ndarray], topic_weight: float,
          stance_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of (topic probabilities, stance probabilities): `(1 - w) * encoder + w * tfidf`."""
    return ((1 - topic_weight) * encoder[0] + topic_weight * tfidf[0], (1 - stance_weight) * encoder[1] + stance_weight * tfidf[1])


def choose_blend_weights(encoder: tuple[np.ndarray, np.ndarray], tfidf: tuple[np.ndarray, np.ndarray], topic_true: np.ndarray,
                         stance_true: np.ndarray) -> dict[str, object]:
    """Per task, the TF-IDF weight of BLEND_GRID with the best dev macro-F1 (topics at thresholds re-tuned for each
    weight); ties go to the smaller weight. Returns the weights and the dev scores of the whole grid."""
    num_stances = encoder[1].shape[1]
    grid = []
    for w in BLEND_GRID:
        topics, stances = blend(encoder, tfidf, float(w), float(w))
        scores = headline_scores(topic_true, topics >= tune_thresholds(topics, topic_true), stance_true, stances.argmax(1), num_stances)
        grid.append({"weight": float(w), "dev_topic_macro_f1": round(scores["topic_macro_f1"], 4),
                     "dev_stance_macro_f1": round(scores["stance_macro_f1"], 4)})
    best = lambda key: max(grid, key=lambda g: (g[key], -g["weight"]))["weight"]  # noqa: E731
    return {"topic_weight": best("dev_topic_macro_f1"), "stance_weight": best("dev_stance_macro_f1"), "dev_grid": grid}
