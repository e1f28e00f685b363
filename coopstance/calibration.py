"""Calibrated scores: two small maps, fitted on dev after training (and after the TF-IDF blend), so that a score of 0.8
means about 80% of such tags are right.

- Topics: one Platt map shared by every topic, `p -> sigmoid(a * logit(p) + b)`. The BCE `pos_weight` pushes topic
  probabilities up and the blend with TF-IDF moves them again; one shared pair (two numbers) corrects both without the
  overfitting of a pair per topic on a few dozen dev positives (measured: the same test ECE).
- Stance: a temperature on the log probabilities, `softmax(log p / T)`.

Both maps are monotone, so they change no ranking and no stance argmax: the topic thresholds are tuned afterwards, on
calibrated dev scores, and the tags stay what they were. `Tagger` applies the map stored in the model's config.json.
Only numpy: inference imports this module, and never imports training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_EPS = 1e-6
# Stance temperatures tried (log-spaced); the fit keeps the one with the lowest dev negative log-likelihood.
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def _softmax_of_log(log_p: np.ndarray, temperature: float) -> np.ndarray:
    z = log_p / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Calibration:
    topic_scale: float = 1.0
    topic_shift: float = 0.0
    stance_temperature: float = 1.0

    def apply(self, topic_probs: np.ndarray, stance_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated (topic probabilities, stance probabilities); same shapes, same orderings."""
        topics = _sigmoid(self.topic_scale * _logit(np.asarray(topic_probs, dtype=np.float64)) + self.topic_shift)
        stances = _softmax_of_log(np.log(np.clip(np.asarray(stance_probs, dtype=np.float64), 1e-12, None)), self.stance_temperature)
        return topics, stances

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 6) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, spec: dict[str, Any], where: str) -> Calibration:
        """From a model's config.json entry; `where` names the file in the error."""
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{where}: unknown calibration key(s) {sorted(unknown)}; re-export the model with this coopstance version")
        calibration = cls(**{k: float(v) for k, v in spec.items()})
        if calibration.topic_scale <= 0 or calibration.stance_temperature <= 0:
            raise ValueError(f"{where}: calibration topic_scale and stance_temperature must be > 0, got {spec}")
        return calibration


def fit_topic_platt(topic_probs: np.ndarray, topic_true: np.ndarray, l2: float = 1e-3, steps: int = 50) -> tuple[float, float]:
    """(a, b) minimising the binary log-loss of sigmoid(a * logit(p) + b) over every (sentence, topic) pair: Newton's
    method on a two-parameter logistic regression (a small L2 pull towards the identity map keeps it defined when dev is
    separable). a is kept positive, so the map stays increasing."""
    z = _logit(np.asarray(topic_probs, dtype=np.float64)).ravel()
    y = np.asarray(topic_true, dtype=np.float64).ravel()
    if len(z) == 0 or y.min() == y.max():
        return 1.0, 0.0
    params = np.array([1.0, 0.0])
    features = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(steps):
        p = _sigmoid(features @ params)
        grad = features.T @ (p - y) / len(y) + l2 * (params - [1.0, 0.0])
        weights = p * (1 - p)
        hessian = (features * weights[:, None]).T @ features / len(y) + l2 * np.eye(2)
        step = np.linalg.solve(hessian, grad)
        params = params - step
        if np.abs(step).max() < 1e-8:
            break
    a, b = float(params[0]), float(params[1])
    return (a, b) if a > 0 else (1.0, 0.0)


def fit_stance_temperature(stance_probs: np.ndarray, stance_true: np.ndarray) -> float:
    """The temperature of TEMPERATURE_GRID with the lowest negative log-likelihood of the gold classes."""
    if len(stance_true) == 0:
        return 1.0
    log_p = np.log(np.clip(np.asarray(stance_probs, dtype=np.float64), 1e-12, None))
    rows = np.arange(len(stance_true))
    nll = [-np.mean(np.log(_softmax_of_log(log_p, t)[rows, stance_true] + 1e-12)) for t in TEMPERATURE_GRID]
    return float(TEMPERATURE_GRID[int(np.argmin(nll))])


def fit_calibration(topic_probs: np.ndarray, topic_true: np.ndarray, stance_probs: np.ndarray, stance_true: np.ndarray) -> Calibration:
    """Both maps, fitted on one split (dev)."""
    a, b = fit_topic_platt(topic_probs, topic_true)
    return Calibration(a, b, fit_stance_temperature(stance_probs, np.asarray(stance_true, dtype=int)))
