"""Shared fixtures. Everything is offline: the model is the tiny random-init BERT of configs/tiny.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from coopstance.config import load_config
from coopstance.labels import load_schema

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: no test may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def schema():
    return load_schema(REPO / "configs" / "labels.yaml")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def record(article_id: str = "a-1", sentence_id: int = 0, **fields) -> dict:
    base = {"article_id": article_id, "sentence_id": sentence_id, "lang": "en", "text": f"Sentence {article_id} {sentence_id}.",
            "topics": [], "stance": "none"}
    return {**base, **fields}


def tiny_config(tmp_path: Path, *overrides: str):
    """configs/tiny.yaml, shrunk further for tests, writing into tmp_path."""
    return load_config(
        REPO / "configs" / "tiny.yaml",
        [f"train.output_root={tmp_path}", "train.epochs=2", "train.bootstrap_samples=20", "train.baseline=false", "train.report=false",
         "model.tiny.vocab_size=800", *overrides],
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny training run shared by the tests that only read its outputs."""
    from coopstance.training import train

    out = tmp_path_factory.mktemp("runs")
    # keep_checkpoints: a test compares the export with the best checkpoint
    cfg = tiny_config(out, "train.run_name=shared", "data.context_sentences=1", "train.baseline=true", "train.keep_checkpoints=true",
                      "train.report=true")
    metrics = train(cfg, argv=["pytest"])
    return cfg, metrics
