"""Run configuration: typed dataclasses, filled from a YAML file and `key=value` overrides.

    cfg = load_config("configs/tiny.yaml", ["train.epochs=3", "data.context_sentences=1"])

Unknown keys and wrong types are errors that name the key, the file (or the command line) and, where it can
guess, the key that was meant. Every field has help text: `python train/train.py --help` prints them all.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from coopstance.labels import REPO_ROOT

TINY_MODEL = "tiny"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS = ("sdpa", "eager")
POOLINGS = ("cls", "mean")


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and how to fix it."""


def _help(text: str, default: Any) -> Any:
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        factory = default if callable(default) else (lambda d=default: type(d)(d))
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TinyModelArgs:
    """Size of the random-init BERT built when `model.name_or_path: tiny` (offline demo and tests)."""

    vocab_size: int = _help("WordPiece vocabulary size of the tokenizer trained on the training split.", 3000)
    hidden_size: int = _help("Hidden size of the tiny BERT.", 64)
    num_hidden_layers: int = _help("Transformer layers of the tiny BERT.", 2)
    num_attention_heads: int = _help("Attention heads of the tiny BERT (must divide hidden_size).", 2)
    intermediate_size: int = _help("Feed-forward size of the tiny BERT.", 128)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.tiny.hidden_size={self.hidden_size} is not divisible by "
                f"model.tiny.num_attention_heads={self.num_attention_heads}; pick sizes that divide"
            )
        if self.vocab_size < 200:
            raise ConfigError(f"model.tiny.vocab_size={self.vocab_size} is too small; use at least 200")


@dataclass
class ModelArgs:
    name_or_path: str = _help(
        "Hub name or local folder of any encoder AutoModelForSequenceClassification supports "
        "(e.g. bert-base-multilingual-cased, xlm-roberta-base, ./my-model), or 'tiny' for a random-init "
        "BERT with a tokenizer trained on the fly.",
        "bert-base-multilingual-cased",
    )
    max_length: int = _help("Maximum tokens per input (target sentence plus context).", 128)
    freeze_word_embeddings: bool = _help(
        "Do not train the word-embedding matrix. For multilingual encoders it is most of the parameters (four fifths "
        "of multilingual-e5-small), so freezing it makes CPU fine-tuning faster and its checkpoints far smaller.",
        False,
    )
    freeze_layers: int = _help(
        "Also freeze all the embeddings and the bottom N encoder layers (0 = none). No gradient then flows below layer N, "
        "so a step costs about (N + 3 (L - N)) / 3L of a full one (forward 1, backward 2); for short CPU runs.",
        0,
    )
    keep_layers: int = _help(
        "Keep only the bottom N encoder layers of the pretrained encoder and drop the rest (0 = keep all). The exported "
        "model is a plain checkpoint with N layers, so training and tagging both cost about N / L of the full model, at a "
        "measured cost in scores (README, cheaper encoders for the demo budget; no config uses it). With multilingual-e5 "
        "only together with model.pooling=mean (its first token carries nothing below the top layer).",
        0,
    )
    pooling: str = _help(
        "What the classification head reads: cls (the first token, the stock head) or mean (the mean of all tokens, as "
        "multilingual-e5 was trained: its first token is an attention sink, nearly the same vector for every input below "
        "the top layer). mean appends one BERT layer built to mean-pool the tokens into the first position, so the exported "
        "folder stays a plain checkpoint with one layer more (see coopstance.model.add_mean_pooling_layer).",
        "cls",
    )
    attention: str = _help(
        "Attention kernel: sdpa (torch's scaled_dot_product_attention) or eager (the reference implementation). "
        "sdpa is the faster one (make bench-train).",
        "sdpa",
    )
    tiny: TinyModelArgs = _help("Sizes used when name_or_path is 'tiny'.", TinyModelArgs)

    def __post_init__(self) -> None:
        if not self.name_or_path.strip():
            raise ConfigError("model.name_or_path is empty; give a hub name, a local folder, or 'tiny'")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"model.attention={self.attention!r} is not one of {ATTENTIONS}{_did_you_mean(self.attention, ATTENTIONS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={self.pooling!r} is not one of {POOLINGS}{_did_you_mean(self.pooling, POOLINGS)}")
        if not 16 <= self.max_length <= 8192:
            raise ConfigError(f"model.max_length={self.max_length} must be between 16 and 8192")
        if self.freeze_layers < 0:
            raise ConfigError(f"model.freeze_layers={self.freeze_layers} must be >= 0 (0 trains every layer)")
        if self.keep_layers < 0:
            raise ConfigError(f"model.keep_layers={self.keep_layers} must be >= 0 (0 keeps every layer)")


@dataclass
class DataArgs:
    sources: list[str] = _help(
        "Where records come from: folders (all .jsonl/.csv/.parquet inside), files, or 'hub:<dataset>[:split]' "
        "for a Hugging Face datasets name (needs network).",
        ["data/corpus", "seeds"],
    )
    splits_file: str = _help(
        "JSON file assigning each article to train/dev/test. Articles missing from it are assigned by a hash of "
        "their article_id (80/10/10), so your own data gets a stable split too.",
        "data/splits.json",
    )
    labels_file: str = _help("The label schema.", "configs/labels.yaml")
    stress_sources: list[str] = _help(
        "The stress set: articles written and annotated blind by someone who never saw the corpus, in the styles of "
        "real outlets. Never trained on or used for thresholds; scored beside test. [] to skip.",
        ["data/stress"],
    )
    context_sentences: int = _help(
        "Feed the N sentences before and after the target as the second segment of a text pair, so that "
        "implicit references ('the three ministers', 'Beijing') can be resolved. 0 = sentence alone.",
        0,
    )
    context_headline: bool = _help(
        "Start every sentence's context segment with its article's first sentence (the headline), so the model knows what "
        "the article is about: a sentence's stance toward China often rests on that ('The host spoke of a new start').",
        False,
    )

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty; list at least one folder, file or hub:<dataset>")
        if not 0 <= self.context_sentences <= 10:
            raise ConfigError(f"data.context_sentences={self.context_sentences} must be between 0 and 10")


@dataclass
class LossArgs:
    topic_weight: float = _help("Weight of the topic binary cross-entropy in the total loss.", 1.0)
    stance_weight: float = _help("Weight of the stance cross-entropy in the total loss.", 1.0)
    topic_pos_weight: bool = _help("Up-weight rare topics: BCE pos_weight = negatives/positives in train.", True)
    stance_class_weights: bool = _help("Inverse-frequency class weights for the stance cross-entropy.", True)
    max_weight: float = _help("Cap for any pos_weight or class weight, so a rare label cannot dominate.", 10.0)
    stance_label_smoothing: float = _help(
        "Label smoothing of the stance cross-entropy (0 = off; torch's label_smoothing): the stance classes shade into "
        "each other (neutral or cooperative?), and smoothing keeps the model from staking everything on one.",
        0.0,
    )

    def __post_init__(self) -> None:
        if self.topic_weight < 0 or self.stance_weight < 0 or self.topic_weight + self.stance_weight == 0:
            raise ConfigError("loss.topic_weight and loss.stance_weight must be >= 0 and not both 0")
        if not 0 <= self.stance_label_smoothing < 1:
            raise ConfigError(f"loss.stance_label_smoothing={self.stance_label_smoothing} must be in [0, 1)")
        if self.max_weight < 1:
            raise ConfigError(f"loss.max_weight={self.max_weight} must be >= 1")


@dataclass
class TrainArgs:
    output_root: str = _help("Folder that holds one sub-folder per run.", "outputs")
    run_name: str = _help("Run folder name under output_root.", "run")
    overwrite: bool = _help(
        "Delete an existing run folder of the same name and start afresh. Without it a finished run is never "
        "overwritten, and an unfinished one (a killed run) is resumed from its last checkpoint.",
        False,
    )
    seed: int = _help("Seed for model init, shuffling and dropout.", 42)
    epochs: float = _help("Training epochs (dev evaluation and a checkpoint after each).", 5.0)
    max_steps: int = _help("Stop after this many optimizer steps (-1 = use epochs). For smoke tests.", -1)
    learning_rate: float = _help("Peak learning rate (AdamW, linear decay).", 3e-5)
    head_learning_rate: float = _help(
        "Peak learning rate of the new classification head (pooler and classifier); 0 = learning_rate. The head starts "
        "from random weights, so a short run (the demo) learns faster when it moves faster than the pretrained encoder.",
        0.0,
    )
    layer_lr_decay: float = _help(
        "Layer-wise learning-rate decay: encoder layer k of L trains at learning_rate * decay^(L - k), the embeddings at "
        "decay^(L + 1); 1.0 = off. Lower layers hold general language knowledge and move less.",
        1.0,
    )
    batch_size: int = _help("Training batch size per device.", 32)
    eval_batch_size: int = _help("Evaluation batch size per device.", 64)
    gradient_accumulation_steps: int = _help("Batches accumulated per optimizer step.", 1)
    warmup_ratio: float = _help("Fraction of steps used for linear warm-up.", 0.1)
    weight_decay: float = _help("AdamW weight decay.", 0.01)
    precision: str = _help(
        "auto (bf16 where the GPU supports it, else fp16 on GPU; fp32 on CPU), bf16 (also on CPUs with native bf16, "
        "AVX512-BF16 or AMX: autocast with fp32 weights), fp16 (GPU only), fp32.", "auto")
    early_stopping_patience: int = _help("Stop after this many epochs without a better dev score (0 = off).", 2)
    logging_steps: int = _help("Log loss and learning rate every N steps (TensorBoard in <run>/logs).", 10)
    save_total_limit: int = _help("Keep at most this many checkpoints (the best one is always kept).", 2)
    keep_checkpoints: bool = _help(
        "Keep checkpoints/ after a finished run. They are needed only to resume a killed run (the exported model/ "
        "is the result) and hold the optimizer state, so by default a finished run folder is left without them.",
        False,
    )
    group_by_length: bool = _help(
        "Batch sentences of similar length together, batches in random order (padding falls from about 45% to 2% of the "
        "tokens: corpus sentences run from 5 to 80 tokens).", True,
    )
    dataloader_num_workers: int = _help("Data loader worker processes.", 0)
    dataloader_pin_memory: bool = _help("Pinned host memory for batches, for faster copies to the GPU (ignored on CPU).", True)
    fused_adamw: bool = _help(
        "The fused AdamW kernel (one kernel updates every parameter, on GPU and CPU) instead of the multi-tensor one.",
        True,
    )
    torch_compile: bool = _help(
        "torch.compile the model. Compiling takes time and every new batch shape may recompile, so it pays off only "
        "in long GPU runs; off by default.",
        False,
    )
    gradient_checkpointing: bool = _help(
        "Recompute activations in the backward pass instead of storing them: less memory (larger batches, longer "
        "inputs), about a third more compute. Off by default.",
        False,
    )
    progress_bar: bool = _help("Show tqdm progress bars.", True)
    bootstrap_samples: int = _help("Article-level bootstrap resamples for the confidence intervals.", 1000)
    baseline: bool = _help("Also train and score a TF-IDF + logistic-regression baseline for metrics.json.", True)
    report: bool = _help(
        "Write the test split's evaluation report, <run>/eval/test/ (report.md with plots, metrics.json, predictions.jsonl), "
        "from the run's own test predictions: what `make evaluate` writes, without tagging the test split a second time.",
        True,
    )
    tfidf_second_opinion: bool = _help(
        "Average the model's probabilities with the TF-IDF model's (per task, weight chosen on dev from 0 to 0.9; 0 = the "
        "encoder alone). The TF-IDF model is exported with the model and the Tagger applies the blend; metrics.json "
        "reports the encoder alone beside it (second_opinion.encoder_alone). Cheap, and robust to unfamiliar styles.",
        False,
    )
    calibrate: bool = _help(
        "Fit score calibration on dev after training (and after the TF-IDF blend): one Platt map shared by the topics and a "
        "stance temperature (coopstance.calibration). Monotone, so the tags do not change; the scores then mean what they "
        "say (a topic score of 0.8 is right about 80% of the time). Exported with the model; the Tagger applies it.",
        True,
    )

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision={self.precision!r} is not one of {PRECISIONS}{_did_you_mean(self.precision, PRECISIONS)}")
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("train.epochs must be > 0 (or set train.max_steps)")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate} must be > 0")
        if self.head_learning_rate < 0:
            raise ConfigError(f"train.head_learning_rate={self.head_learning_rate} must be >= 0 (0 = train.learning_rate)")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"train.layer_lr_decay={self.layer_lr_decay} must be in (0, 1] (1 = off)")
        if not self.run_name or "/" in self.run_name or self.run_name in (".", ".."):
            raise ConfigError(f"train.run_name={self.run_name!r} must be a plain folder name")


@dataclass
class RunConfig:
    model: ModelArgs = _help("Encoder to fine-tune.", ModelArgs)
    data: DataArgs = _help("Records, splits and labels.", DataArgs)
    loss: LossArgs = _help("Multi-task loss weights.", LossArgs)
    train: TrainArgs = _help("Optimisation, checkpoints and outputs.", TrainArgs)

    @property
    def run_dir(self) -> Path:
        return resolve_path(self.train.output_root, must_exist=False) / self.train.run_name

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False, allow_unicode=True)


def resolve_path(path: str | Path, must_exist: bool = True) -> Path:
    """A relative path is taken from the current folder, else from the repository root (scripts run from either)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or not must_exist:
        return p
    from_root = REPO_ROOT / p
    return from_root if from_root.exists() else p


def _did_you_mean(word: str, choices: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f". Did you mean '{prefix}{close[0]}'?" if close else ""


def _check_keys(values: dict[str, Any], cls: type, prefix: str, origin: str) -> None:
    """Reject unknown keys before OmegaConf sees them, with the full dotted key and a suggestion."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"{origin}: unknown key '{dotted}'{_did_you_mean(key, fields, prefix)} "
                f"Valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}"
            )
        sub = fields[key].type
        sub_cls = globals().get(sub) if isinstance(sub, str) else sub
        if dataclasses.is_dataclass(sub_cls):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{dotted}' is a section; write '{dotted}.<key>: value'")
            _check_keys(value, sub_cls, dotted + ".", origin)


def _overrides_to_dict(overrides: list[str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: '{item}' is not a key=value override (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: '{key}' conflicts with another override")
        node[parts[-1]] = value
    return nested


def _merge(base: Any, values: dict[str, Any], origin: str) -> Any:
    try:
        return OmegaConf.merge(base, values)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{origin}: bad value for '{key}': {msg}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- command-line overrides, validated into a `RunConfig`."""
    cfg = OmegaConf.structured(RunConfig)
    if path is not None:
        file = resolve_path(path)
        if not file.is_file():
            raise ConfigError(f"{path}: config file not found. Configs shipped: {', '.join(list_configs())}")
        try:
            values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, loss, train)")
        _check_keys(values, RunConfig, "", str(path))
        cfg = _merge(cfg, values, str(path))
    if overrides:
        values = _overrides_to_dict(overrides)
        _check_keys(values, RunConfig, "", "command line")
        cfg = _merge(cfg, values, "command line")
    origin = " + ".join(filter(None, [str(path) if path else "", "command line" if overrides else ""])) or "defaults"
    try:
        return OmegaConf.to_object(cfg)  # runs each dataclass's __post_init__ validation
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{origin}: {str(err).splitlines()[0]}") from None


def list_configs() -> list[str]:
    root = REPO_ROOT / "configs"
    return sorted(str(p.relative_to(REPO_ROOT)) for p in root.rglob("*.yaml") if p.name != "labels.yaml")


def help_text() -> str:
    """One line per key with its default and help, for `--help`."""
    lines: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        instance = cls()
        for f in dataclasses.fields(cls):
            sub = globals().get(f.type) if isinstance(f.type, str) else f.type
            if dataclasses.is_dataclass(sub):
                walk(sub, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name}={getattr(instance, f.name)!r}\n      {f.metadata.get('help', '')}")

    walk(RunConfig, "")
    return "\n".join(lines)
