"""`train(cfg)`: fine-tune, pick the best epoch on dev, tune topic thresholds, score dev and test, export.

Run folder layout (`<train.output_root>/<train.run_name>/`):
    config.yaml      resolved config          command.txt   the command line that started the run
    checkpoints/     Trainer checkpoints      logs/         TensorBoard
    model/           the exported checkpoint (plain transformers; config.json carries labels and thresholds)
    metrics.json     dev and test scores with 95% intervals, and the baseline; written last, so its presence
                     marks a finished run
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from accelerate import PartialState
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from coopstance.calibration import Calibration, fit_calibration
from coopstance.config import RunConfig
from coopstance.data import (
    Record,
    label_matrix,
    load_records,
    load_splits,
    model_inputs,
    split_records,
    uses_context,
)
from coopstance.labels import LabelSchema, load_schema
from coopstance.metrics import (
    china_stance_without_china,
    epoch_dev_scores,
    evaluate_predictions,
    expected_calibration_error,
    headline_scores,
    sigmoid,
    softmax,
    tune_thresholds,
)
from coopstance.model import (
    build_tiny_model,
    ensure_model_available,
    is_tiny,
    load_pretrained,
    loss_weights,
    multitask_loss,
    train_tiny_tokenizer,
)
from coopstance.modelcard import write_model_card
from coopstance.throughput import ShuffledLengthGroupedSampler, attach_throughput, speed_arguments
from coopstance.utils import atomic_write_json, atomic_write_text, current_umask

if TYPE_CHECKING:  # imported where used: sklearn loads only when a run fits the TF-IDF model
    from coopstance.baseline import TfidfBaseline

FINISHED_MARKER = "metrics.json"


class RunFolderError(RuntimeError):
    """The run folder holds a finished run, or a different config than the one being resumed."""


class EncodedDataset(torch.utils.data.Dataset):
    """Tokenized sentences with packed labels `[multi-hot topics | stance index]`."""

    def __init__(self, records: list[Record], tokenizer: PreTrainedTokenizerBase, schema: LabelSchema, cfg: RunConfig) -> None:
        texts, pairs = model_inputs(records, cfg.data.context_sentences, cfg.data.context_headline)
        second = pairs if uses_context(cfg.data.context_sentences, cfg.data.context_headline) else None
        self.encodings = tokenizer(texts, second, truncation=True, max_length=cfg.model.max_length)
        topics, stances = label_matrix(records, schema)
        self.labels = [row + [float(s)] for row, s in zip(topics, stances)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**{k: v[i] for k, v in self.encodings.items()}, "labels": self.labels[i]}


_LAYER_INDEX = re.compile(r"\.layers?\.(\d+)\.")  # encoder.layer.7. (BERT, XLM-R), transformer.layer.7. (DistilBERT)


def parameter_learning_rates(model: torch.nn.Module, learning_rate: float, head_learning_rate: float = 0.0,
                             layer_lr_decay: float = 1.0) -> dict[str, float]:
    """Peak learning rate per trainable parameter name.

    Encoder layer k (0-based) of L trains at `learning_rate * layer_lr_decay ** (L - 1 - k)`, the embeddings one step
    lower, the head (everything outside the embeddings and the layers: pooler, classifier) at `head_learning_rate`
    (0 = `learning_rate`)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    layers = {n: int(m.group(1)) for n in names if (m := _LAYER_INDEX.search(n))}
    depth = max(layers.values(), default=-1) + 1
    rates = {}
    for name in names:
        if name in layers:
            rates[name] = learning_rate * layer_lr_decay ** (depth - 1 - layers[name])
        elif "embeddings" in name:
            rates[name] = learning_rate * layer_lr_decay ** depth
        else:
            rates[name] = head_learning_rate or learning_rate
    return rates


class MultiTaskTrainer(Trainer):
    # Our loss is a per-batch mean, so Trainer must still divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, loss_fn_kwargs: dict[str, Any], head_learning_rate: float = 0.0, layer_lr_decay: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn_kwargs = loss_fn_kwargs
        self.head_learning_rate, self.layer_lr_decay = head_learning_rate, layer_lr_decay

    def create_optimizer(self, model=None):  # noqa: ANN001, ANN201
        if self.optimizer is not None or (not self.head_learning_rate and self.layer_lr_decay == 1.0):
            return super().create_optimizer(model)
        # Trainer's two groups (weight decay or not), split further by learning rate; the scheduler scales each group.
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        rates = parameter_learning_rates(opt_model, self.args.learning_rate, self.head_learning_rate, self.layer_lr_decay)
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if name in rates:
                groups.setdefault((rates[name], self.args.weight_decay if name in decay else 0.0), []).append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                                       **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = multitask_loss(outputs.logits, labels, **self.loss_fn_kwargs)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset  # length groups in random order: throughput.py
        lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
        return ShuffledLengthGroupedSampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps)

    def _get_eval_sampler(self, eval_dataset):  # noqa: ANN001, ANN202
        # transformers 5 applies group_by_length to evaluation too and returns predictions in that shuffled order; ours
        # must stay row-aligned with the records (dev thresholds, metrics.json), so evaluate in dataset order.
        return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


def _config_for_compare(cfg: RunConfig) -> dict[str, Any]:
    values = dataclasses.asdict(cfg)
    values["train"].pop("overwrite")
    return values


def prepare_run_dir(cfg: RunConfig, state: PartialState) -> str | None:
    """Refuse to clobber a finished run; return the checkpoint to resume from for a killed one."""
    run_dir = cfg.run_dir
    exists, finished = run_dir.exists(), (run_dir / FINISHED_MARKER).exists()
    state.wait_for_everyone()  # every rank looks before rank 0 deletes anything
    if cfg.train.overwrite and exists:
        if state.is_main_process:
            print(f"[coopstance] train.overwrite=true: removing {run_dir} and starting afresh")
            shutil.rmtree(run_dir)
        state.wait_for_everyone()
        return None
    if finished:
        raise RunFolderError(
            f"{run_dir} already holds a finished run ({FINISHED_MARKER} exists). Choose another name "
            f"(train.run_name=...) or replace it with train.overwrite=true."
        )
    last = get_last_checkpoint(str(run_dir / "checkpoints")) if (run_dir / "checkpoints").is_dir() else None
    saved = run_dir / "config.yaml"
    if last and saved.is_file():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
        previous.get("train", {}).pop("overwrite", None)
        if previous != _config_for_compare(cfg):
            changed = [
                f"{section}.{key}" for section, values in _config_for_compare(cfg).items()
                for key, value in values.items() if previous.get(section, {}).get(key) != value
            ]
            raise RunFolderError(
                f"{run_dir} holds an unfinished run with a different config (changed: {', '.join(changed)}). "
                "Resume it with the same config, or start a new run with train.run_name=..."
            )
    return last


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matmuls (AVX512-BF16 or AMX), where oneDNN runs them about 2x faster than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> tuple[bool, bool]:
    """(bf16, fp16) flags for TrainingArguments. On a CPU, bf16 (autocast, fp32 master weights) runs only when asked
    for and the CPU has native bf16; "auto" stays fp32 there."""
    if precision == "auto":
        if torch.cuda.is_available():
            return (True, False) if torch.cuda.is_bf16_supported() else (False, True)
        return False, False
    if not torch.cuda.is_available():
        if precision == "bf16" and cpu_supports_bf16():
            return True, False
        if precision in ("bf16", "fp16"):
            why = "fp16 needs a GPU" if precision == "fp16" else "this CPU has no native bf16 (AVX512-BF16 or AMX)"
            print(f"[coopstance] train.precision={precision}: {why}; training in fp32", file=sys.stderr)
        return False, False
    return precision == "bf16", precision == "fp16"


@contextlib.contextmanager
def full_precision(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` in fp32 inside the block. Mixed-precision training wraps its forward in autocast (accelerate keeps
    the plain one as `_original_forward`); the final dev/test predictions must be the fp32 ones the exported model
    and the Tagger give, so that the tuned thresholds and metrics.json hold for them."""
    wrapped = model.__dict__.get("forward")
    original = getattr(model, "_original_forward", None)
    if wrapped is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped


def _tokenizer_and_model(
    cfg: RunConfig, schema: LabelSchema, train_records: list[Record], state: PartialState
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if not is_tiny(cfg.model):
        return load_pretrained(cfg.model, schema)
    tokenizer_dir = cfg.run_dir / "tokenizer"
    with state.main_process_first():  # rank 0 trains and saves it; the others load the same files
        if (tokenizer_dir / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        else:
            tokenizer = train_tiny_tokenizer([r.text for r in train_records], cfg.model.tiny.vocab_size)
            if state.is_main_process:  # via a temporary folder, so a killed run never resumes from half a tokenizer
                tmp = cfg.run_dir / ".tokenizer.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tokenizer.save_pretrained(tmp)
                shutil.rmtree(tokenizer_dir, ignore_errors=True)
                os.replace(tmp, tokenizer_dir)
    return build_tiny_model(cfg.model, schema, tokenizer), tokenizer


def _predict(trainer: Trainer, dataset: EncodedDataset, num_topics: int) -> tuple[np.ndarray, np.ndarray]:
    """Topic probabilities and stance logits, row-aligned with `dataset`. Rows go through the model sorted by length
    (batches in dataset order carry about 45% padding) and are put back in order."""
    order = np.argsort([len(ids) for ids in dataset.encodings["input_ids"]], kind="stable")
    logits = trainer.predict(torch.utils.data.Subset(dataset, order.tolist())).predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    unsorted = np.empty_like(logits)
    unsorted[order] = logits
    return sigmoid(unsorted[:, :num_topics]), unsorted[:, num_topics:]


def _report(topic_probs: np.ndarray, stance_scores: np.ndarray, records: list[Record], thresholds: np.ndarray,
            schema: LabelSchema, cfg: RunConfig) -> dict[str, Any]:
    topics, stances = label_matrix(records, schema)
    report = evaluate_predictions(
        np.asarray(topics, dtype=bool), topic_probs >= thresholds, np.asarray(stances), stance_scores.argmax(1),
        [r.article_id for r in records], schema, cfg.train.bootstrap_samples, cfg.train.seed,
    )
    report["china_stance_without_china"] = china_stance_without_china(stances, stance_scores.argmax(1), schema.stances.index("none"),
                                                                      [r.article_id for r in records])
    return report


def add_second_opinion(outputs: dict[str, tuple[np.ndarray, np.ndarray]], splits: dict[str, list[Record]], tfidf: TfidfBaseline,
                       schema: LabelSchema) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Blend the encoder's (topic, stance) probabilities per split with the TF-IDF model's, weights chosen on dev."""
    from coopstance.baseline import blend, choose_blend_weights

    tfidf_outputs = {name: tfidf.predict_proba(splits[name]) for name in outputs}
    dev_topics, dev_stances = label_matrix(splits["dev"], schema)
    chosen = choose_blend_weights(outputs["dev"], tfidf_outputs["dev"], np.asarray(dev_topics, dtype=bool), np.asarray(dev_stances))
    blended = {name: blend(outputs[name], tfidf_outputs[name], chosen["topic_weight"], chosen["stance_weight"]) for name in outputs}
    return blended, {"name": "char 2-4-gram TF-IDF + logistic regression", "chosen_on": "dev", **chosen}


def calibrate_outputs(outputs: dict[str, tuple[np.ndarray, np.ndarray]], splits: dict[str, list[Record]],
                      schema: LabelSchema) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], Calibration, dict[str, Any]]:
    """Fit the calibration maps on dev, apply them to every split; report the expected calibration error before and after."""
    truth = {name: label_matrix(part, schema) for name, part in splits.items()}
    calibration = fit_calibration(outputs["dev"][0], np.asarray(truth["dev"][0]), outputs["dev"][1], np.asarray(truth["dev"][1]))
    calibrated = {name: calibration.apply(*probs) for name, probs in outputs.items()}

    def ece(probs: tuple[np.ndarray, np.ndarray], name: str) -> dict[str, float]:
        topics, stances = np.asarray(truth[name][0], dtype=bool), np.asarray(truth[name][1])
        return {"topics": round(expected_calibration_error(probs[0].ravel(), topics.ravel()), 4),
                "stance": round(expected_calibration_error(probs[1].max(1), probs[1].argmax(1) == stances), 4)}

    report = {**calibration.to_dict(), "fitted_on": "dev",
              "expected_calibration_error": {name: {"before": ece(outputs[name], name), "after": ece(calibrated[name], name)}
                                             for name in outputs}}
    return calibrated, calibration, report


def baseline_report(splits: dict[str, list[Record]], schema: LabelSchema, cfg: RunConfig, baseline: TfidfBaseline) -> dict[str, Any]:
    """The baseline (fitted on train, thresholds on dev) scored on test and on the stress set if there is one."""
    report = {}
    for name in ("test", "stress"):
        if not splits.get(name):
            continue
        topic_pred, stance_pred = baseline.predict(splits[name])
        topics, stances = label_matrix(splits[name], schema)
        report[name] = evaluate_predictions(
            np.asarray(topics, dtype=bool), topic_pred, np.asarray(stances), stance_pred,
            [r.article_id for r in splits[name]], schema, cfg.train.bootstrap_samples, cfg.train.seed,
        )
        report[name]["china_stance_without_china"] = china_stance_without_china(stances, stance_pred, schema.stances.index("none"),
                                                                            [r.article_id for r in splits[name]])
    return report


def write_test_report(model_dir: Path, records: list[Record], output: tuple[np.ndarray, np.ndarray], thresholds: np.ndarray,
                      cfg: RunConfig) -> Path:
    """`train.report`: `<run>/eval/test/`, as `eval/evaluate.py <run>/model` writes it, from this run's own test predictions
    (the exported model gives the same ones: tests/test_training.py), so the test split is not tagged twice."""
    from coopstance.evaluation import SystemOutput, run_evaluation
    from coopstance.report import write_report

    topic_probs, stance_probs = output
    predictions = SystemOutput(topic_probs, topic_probs >= thresholds, stance_probs, stance_probs.argmax(1), thresholds)
    evaluation = run_evaluation(model_dir, "test", bootstrap_samples=cfg.train.bootstrap_samples, baseline=cfg.train.baseline,
                                precomputed=(records, predictions))
    folder = write_report(evaluation, cfg.run_dir / "eval" / "test")
    print(f"[coopstance] test report: {folder}")
    return folder


def export_model(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, thresholds: np.ndarray, schema: LabelSchema,
                 cfg: RunConfig, second_opinion: tuple[TfidfBaseline, dict[str, Any]] | None = None,
                 calibration: Calibration | None = None) -> Path:
    """Write `<run>/model/` via a temporary folder and a rename, so a crash never leaves half a checkpoint."""
    final, tmp = cfg.run_dir / "model", cfg.run_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.topic_thresholds = {t: float(v) for t, v in zip(schema.topics, thresholds)}
    model.config.context_sentences = cfg.data.context_sentences
    model.config.context_headline = cfg.data.context_headline
    model.config.max_seq_length = cfg.model.max_length  # not "max_length": transformers reserves it for generation
    model.config.label_descriptions = dict(schema.descriptions)  # so the exported folder explains its labels (Tagger.label_info)
    if second_opinion is not None:  # the Tagger blends the encoder's probabilities with this model's (coopstance.baseline)
        from coopstance.baseline import SECOND_OPINION_FOLDER

        tfidf, chosen = second_opinion
        model.config.second_opinion = {"kind": "tfidf", "folder": SECOND_OPINION_FOLDER, "topic_weight": chosen["topic_weight"],
                                       "stance_weight": chosen["stance_weight"]}
        tfidf.save(tmp / SECOND_OPINION_FOLDER)
    if calibration is not None:  # applied by the Tagger after the blend (coopstance.calibration)
        model.config.calibration = calibration.to_dict()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "training_config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    file_mode = 0o666 & ~current_umask()  # transformers writes the weights via a private (0600) temporary file
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(file_mode)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def train(cfg: RunConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and export one run; returns the contents of metrics.json."""
    started = time.time()
    use_cpu = not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)  # cpu=True lets torchrun on a CPU box form a gloo process group
    if not is_tiny(cfg.model):
        ensure_model_available(cfg.model.name_or_path)  # fail in seconds, before any data work or folder is made
    schema = load_schema(cfg.data.labels_file)
    records = load_records(cfg.data.sources, schema)
    splits, unlisted = split_records(records, load_splits(cfg.data.splits_file))
    for name, part in splits.items():
        if not part:
            raise RuntimeError(f"the {name} split is empty; check {cfg.data.splits_file} and data.sources")
    if unlisted and state.is_main_process:
        print(f"[coopstance] {len(unlisted)} article(s) not in {cfg.data.splits_file} were split by hash of their id")

    resume_from = prepare_run_dir(cfg, state)
    run_dir = cfg.run_dir
    if state.is_main_process:
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        command = shlex.join(argv if argv is not None else sys.argv)
        atomic_write_text(run_dir / "command.txt", command + "\n")
        if resume_from:
            print(f"[coopstance] resuming the unfinished run in {run_dir} from {resume_from}")
    state.wait_for_everyone()

    set_seed(cfg.train.seed)
    model, tokenizer = _tokenizer_and_model(cfg, schema, splits["train"], state)
    datasets = {name: EncodedDataset(part, tokenizer, schema, cfg) for name, part in splits.items()}
    topic_rows, stance_ids = label_matrix(splits["train"], schema)
    pos_weight, class_weight = loss_weights(topic_rows, stance_ids, schema, cfg.loss)

    # With one epoch (or fewer steps) there is no epoch to choose: skip the per-epoch dev pass, the export scores dev anyway.
    world = state.num_processes
    steps_per_epoch = -(-len(datasets["train"]) // (cfg.train.batch_size * cfg.train.gradient_accumulation_steps * world))
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else int(np.ceil(cfg.train.epochs * steps_per_epoch))
    choose_epoch = total_steps > steps_per_epoch

    bf16, fp16 = resolve_precision(cfg.train.precision)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "logs")
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        learning_rate=cfg.train.learning_rate,
        per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=cfg.train.eval_batch_size,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        warmup_steps=cfg.train.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        weight_decay=cfg.train.weight_decay,
        bf16=bf16,
        fp16=fp16,
        eval_strategy="epoch" if choose_epoch else "no",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=cfg.train.logging_steps,
        save_total_limit=cfg.train.save_total_limit,
        load_best_model_at_end=choose_epoch,
        metric_for_best_model="selection_score",
        greater_is_better=True,
        seed=cfg.train.seed,
        dataloader_num_workers=cfg.train.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random",
        report_to=["tensorboard"],
        disable_tqdm=not cfg.train.progress_bar,
        ddp_find_unused_parameters=False,
        use_cpu=use_cpu,
        **speed_arguments(cfg, use_cpu),
    )

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        labels = prediction.label_ids
        # both topic cut-offs, labelled: 0.5 (which picks the epoch) and thresholds tuned on this dev set (as metrics.json)
        return epoch_dev_scores(
            labels[:, :schema.num_topics] > 0.5, sigmoid(logits[:, :schema.num_topics]),
            labels[:, schema.num_topics].astype(int), logits[:, schema.num_topics:].argmax(1), schema.num_stances,
        )

    callbacks = [EarlyStoppingCallback(cfg.train.early_stopping_patience)] if cfg.train.early_stopping_patience and choose_epoch else []
    trainer = MultiTaskTrainer(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["dev"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        loss_fn_kwargs={
            "num_topics": schema.num_topics, "topic_pos_weight": pos_weight, "stance_class_weight": class_weight,
            "topic_weight": cfg.loss.topic_weight, "stance_weight": cfg.loss.stance_weight,
            "stance_label_smoothing": cfg.loss.stance_label_smoothing,
        },
        head_learning_rate=cfg.train.head_learning_rate,
        layer_lr_decay=cfg.train.layer_lr_decay,
    )
    throughput = attach_throughput(trainer)  # samples/s, tokens/s, padding, MFU, peak memory in every log
    train_output = trainer.train(resume_from_checkpoint=resume_from)

    stress = load_records(cfg.data.stress_sources, schema) if cfg.data.stress_sources else []
    scored = {"dev": splits["dev"], "test": splits["test"], **({"stress": stress} if stress else {})}
    outputs = {}  # split -> (topic probabilities, stance probabilities)
    for name, part in scored.items():
        with full_precision(trainer.model):
            topic_probs, stance_logits = _predict(trainer, datasets[name] if name in datasets else EncodedDataset(part, tokenizer, schema, cfg),
                                                  schema.num_topics)
        outputs[name] = (topic_probs, softmax(stance_logits))
    if not state.is_main_process:
        state.wait_for_everyone()
        return {}
    tfidf = None
    if cfg.train.baseline or cfg.train.tfidf_second_opinion:
        from coopstance.baseline import TfidfBaseline

        tfidf = TfidfBaseline(schema, cfg.train.seed).fit(splits["train"], splits["dev"])
    second_opinion = None
    if cfg.train.tfidf_second_opinion:
        thresholds = tune_thresholds(outputs["dev"][0], np.asarray(label_matrix(splits["dev"], schema)[0]))
        encoder_only = {name: headline_scores(np.asarray(label_matrix(part, schema)[0], dtype=bool), outputs[name][0] >= thresholds,
                                              np.asarray(label_matrix(part, schema)[1]), outputs[name][1].argmax(1), schema.num_stances)
                        for name, part in scored.items()}
        outputs, second_opinion = add_second_opinion(outputs, scored, tfidf, schema)
        second_opinion["encoder_alone"] = {name: {k: round(v, 4) for k, v in s.items()} for name, s in encoder_only.items()}
    calibration, calibration_report = None, None
    if cfg.train.calibrate:  # monotone maps fitted on dev: the thresholds below are tuned on the calibrated scores
        outputs, calibration, calibration_report = calibrate_outputs(outputs, scored, schema)
    thresholds = tune_thresholds(outputs["dev"][0], np.asarray(label_matrix(splits["dev"], schema)[0]))
    metrics: dict[str, Any] = {
        "run": cfg.train.run_name,
        "model": cfg.model.name_or_path,
        "note": "dev scores use thresholds tuned on dev (optimistic); test is the held-out estimate",
        "thresholds": {t: float(v) for t, v in zip(schema.topics, thresholds)},
        **{name: _report(*outputs[name], part, thresholds, schema, cfg) for name, part in scored.items()},
        **({"second_opinion": second_opinion} if second_opinion else {}),
        **({"calibration": calibration_report} if calibration_report else {}),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_steps": int(train_output.global_step),
        "train_loss": float(train_output.training_loss),
        "runtime_s": round(time.time() - started, 1),
        "throughput": throughput.summary(),
    }
    if cfg.train.baseline:
        metrics["baseline"] = {"name": "char 2-4-gram TF-IDF + logistic regression",
                               **baseline_report({**splits, "stress": stress}, schema, cfg, tfidf)}
    model_dir = export_model(trainer, tokenizer, thresholds, schema, cfg, (tfidf, second_opinion) if second_opinion else None,
                             calibration)
    write_model_card(model_dir, splits, metrics["test"], metrics.get("baseline", {}).get("test"), "the training run (metrics.json)")
    metrics["checkpoints_kept"] = cfg.train.keep_checkpoints
    if cfg.train.report:
        write_test_report(model_dir, splits["test"], outputs["test"], thresholds, cfg)
    atomic_write_json(run_dir / FINISHED_MARKER, metrics)
    if not cfg.train.keep_checkpoints:  # after metrics.json: a run killed here is finished, not resumable
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    state.wait_for_everyone()
    return metrics
