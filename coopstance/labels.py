"""The label schema, read from `configs/labels.yaml` (the only place label ids are written down).

The model has one head whose logits are `[topic logits | stance logits]`; `LabelSchema` fixes that order and
the names that go into the exported `config.json` (`topic/<id>`, `stance/<id>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LABELS_FILE = REPO_ROOT / "configs" / "labels.yaml"
TOPIC_PREFIX = "topic/"
STANCE_PREFIX = "stance/"


@dataclass(frozen=True)
class LabelSchema:
    topics: tuple[str, ...]
    stances: tuple[str, ...]
    descriptions: dict[str, str]

    @property
    def num_topics(self) -> int:
        return len(self.topics)

    @property
    def num_stances(self) -> int:
        return len(self.stances)

    @property
    def num_labels(self) -> int:
        return self.num_topics + self.num_stances

    @property
    def id2label(self) -> dict[int, str]:
        names = [TOPIC_PREFIX + t for t in self.topics] + [STANCE_PREFIX + s for s in self.stances]
        return dict(enumerate(names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @classmethod
    def from_id2label(cls, id2label: dict[int, str]) -> LabelSchema:
        """Rebuild the schema from an exported model's `config.json`, so inference needs no YAML file."""
        by_index = {int(k): v for k, v in id2label.items()}  # config.json stores the keys as strings
        names = [by_index[i] for i in sorted(by_index)]
        topics = tuple(n[len(TOPIC_PREFIX):] for n in names if n.startswith(TOPIC_PREFIX))
        stances = tuple(n[len(STANCE_PREFIX):] for n in names if n.startswith(STANCE_PREFIX))
        if len(topics) + len(stances) != len(names) or not stances:
            raise ValueError(
                f"id2label {names} is not a coopstance head: every label must start with "
                f"'{TOPIC_PREFIX}' or '{STANCE_PREFIX}', topics first. Was this model exported by coopstance?"
            )
        return cls(topics=topics, stances=stances, descriptions={})


@lru_cache(maxsize=8)
def load_schema(path: str | Path = DEFAULT_LABELS_FILE) -> LabelSchema:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label schema not found; pass data.labels_file=<path to labels.yaml>")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in ("topics", "stances"):
        if not isinstance(raw.get(key), dict) or not raw[key]:
            raise ValueError(f"{path}: needs a non-empty mapping '{key}: {{id: definition}}'")
    unknown = set(raw) - {"topics", "stances"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; only 'topics' and 'stances' are allowed")
    topics, stances = tuple(raw["topics"]), tuple(raw["stances"])
    clash = set(topics) & set(stances)
    if clash:
        raise ValueError(f"{path}: ids used both as topic and stance: {sorted(clash)}")
    descriptions = {**{t: str(d) for t, d in raw["topics"].items()}, **{s: str(d) for s, d in raw["stances"].items()}}
    return LabelSchema(topics=topics, stances=stances, descriptions=descriptions)
