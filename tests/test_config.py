from pathlib import Path

import pytest

from coopstance.config import ConfigError, RunConfig, help_text, load_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.name != "labels.yaml")


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "mbert.yaml", "xlmr.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_opens_with_its_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    first_lines = path.read_text(encoding="utf-8").splitlines()[:6]
    assert first_lines[0].startswith("#")
    assert any(path.name in line and ("make " in line or "train.py" in line) for line in first_lines if line.startswith("#"))


def test_defaults_and_overrides():
    cfg = load_config(REPO / "configs/tiny.yaml", ["train.epochs=3", "data.context_sentences=2", "data.sources=[a.jsonl]"])
    assert cfg.model.name_or_path == "tiny"
    assert cfg.train.epochs == 3.0 and cfg.data.context_sentences == 2 and cfg.data.sources == ["a.jsonl"]
    assert cfg.run_dir.name == "tiny"


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learnig_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.yaml" in str(err.value) and "train.learnig_rate" in str(err.value)
    assert "Did you mean 'train.learning_rate'" in str(err.value)


def test_unknown_section_and_override_typos():
    with pytest.raises(ConfigError, match="unknown key 'trian'. Did you mean 'train'"):
        load_config(None, ["trian.epochs=2"])
    with pytest.raises(ConfigError, match="command line: unknown key 'model.nme_or_path'"):
        load_config(None, ["model.nme_or_path=x"])
    with pytest.raises(ConfigError, match="not a key=value"):
        load_config(None, ["train.epochs"])


def test_wrong_types_and_invalid_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="Did you mean 'bf16'"):
        load_config(None, ["train.precision=bf61"])
    with pytest.raises(ConfigError, match=r"train.layer_lr_decay=1.5 must be in \(0, 1\]"):
        load_config(None, ["train.layer_lr_decay=1.5"])
    with pytest.raises(ConfigError, match="train.head_learning_rate=-0.1 must be >= 0"):
        load_config(None, ["train.head_learning_rate=-0.1"])
    bad = tmp_path / "b.yaml"
    bad.write_text("data:\n  context_sentences: 99\n")
    with pytest.raises(ConfigError, match=r"b.yaml: data.context_sentences=99"):
        load_config(bad)


def test_missing_file_lists_the_shipped_configs():
    with pytest.raises(ConfigError, match="configs/tiny.yaml"):
        load_config("configs/nope.yaml")


def test_help_lists_every_key():
    text = help_text()
    for key in ("model.name_or_path", "model.tiny.hidden_size", "data.context_sentences", "loss.topic_pos_weight", "train.overwrite"):
        assert key in text
