"""A simple, honest baseline reported beside the model: character n-gram TF-IDF + logistic regression.

Character n-grams need no word segmentation, so the same baseline works for German and for Japanese.
Topic thresholds are tuned on dev exactly as for the model, so the comparison is like for like.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from coopstance.data import Record, label_matrix
from coopstance.labels import LabelSchema
from coopstance.metrics import tune_thresholds


class TfidfBaseline:
    def __init__(self, schema: LabelSchema, seed: int = 0) -> None:
        self.schema = schema
        self.seed = seed
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True, max_features=50000)
        self.topic_models: list[LogisticRegression | float] = []
        self.stance_model: LogisticRegression | None = None
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
        self.topic_models = []
        for j in range(self.schema.num_topics):
            column = y_topics[:, j]
            if column.min() == column.max():  # a topic absent (or everywhere) in train: predict its rate
                self.topic_models.append(float(column[0]))
                continue
            model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=self.seed)
            self.topic_models.append(model.fit(x, column))
        self.stance_model = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=self.seed)
        self.stance_model.fit(x, np.asarray(stances))
        dev_probs, _ = self.predict_proba(dev)
        self.thresholds = tune_thresholds(dev_probs, np.asarray(label_matrix(dev, self.schema)[0]))
        return self

    def predict_proba(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
        x = self.vectorizer.transform([r.text for r in records])
        topic_probs = np.column_stack([
            np.full(x.shape[0], m) if isinstance(m, float) else m.predict_proba(x)[:, 1] for m in self.topic_models
        ])
        assert self.stance_model is not None, "call fit() first"
        stance_probs = np.zeros((x.shape[0], self.schema.num_stances))
        stance_probs[:, self.stance_model.classes_] = self.stance_model.predict_proba(x)
        return topic_probs, stance_probs

    def predict(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
        topic_probs, stance_probs = self.predict_proba(records)
        return topic_probs >= self.thresholds, stance_probs.argmax(1)
