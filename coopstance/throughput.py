"""Training speed: what every run logs about it, and the settings that raise it.

`attach_throughput(trainer)` adds a `ThroughputCallback` that logs, at every logging step (console and TensorBoard,
under train/): samples/s, non-padding tokens/s, the share of padding, MFU and peak memory; `callback.summary()` is
the whole run's figures for metrics.json. `speed_arguments(cfg, use_cpu)` are the `TrainingArguments` of the speed
options in the config (optimizer, torch.compile, gradient checkpointing, pinned memory); `ShuffledLengthGroupedSampler`
is the batch order of `train.group_by_length`.

FLOP count (training = forward + backward, backward ~ 2x forward), per sequence of s non-padding tokens:

    6 * N * s  +  12 * L * H * s^2

N = non-embedding parameters (embedding look-ups are not matrix products), L = layers, H = hidden size. The first
term is the matrix products with the weights (2 FLOPs per multiply-add, x3 for forward and backward); the second is
attention's QK^T and AV (2 * s^2 * H FLOPs each per layer forward, x3). Padding tokens are computed but not counted:
they are waste, so MFU falls when batches carry padding. MFU = counted FLOPs per second / the device's peak.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import DefaultFlowCallback, PreTrainedModel, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

if TYPE_CHECKING:
    from transformers import Trainer

    from coopstance.config import RunConfig

# Dense peak FLOP/s per device (vendor data sheets, no sparsity): bf16/fp16 on the tensor cores, and fp32 without TF32
# (torch's default for matrix products). The H200 has the H100 SXM's compute and more memory.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},  # SXM
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L4": {"bf16": 121e12, "fp32": 30.3e12},
    # Measured, not a data sheet: measure_cpu_peak_flops on the 2-core AMD EPYC (AVX-512) development box, shared with
    # other jobs: 157-172 GFLOP/s on 2 threads, 84-90 on 1. On CPU every run measures its own machine the same way.
    "cpu (2-core dev box)": {"fp32": 170e9},
}
# Many short products rather than a few long ones: on a CPU shared with other jobs, one of a few milliseconds often runs
# undisturbed, where a long one always shares the cores (measured: 512, best of 40, 87 GFLOP/s on one thread; 1536, best of
# 12, 46 GFLOP/s, on the same loaded machine).
CPU_MATMUL_SIZE = 512


@functools.lru_cache(maxsize=8)
def measure_cpu_peak_flops(threads: int, size: int = CPU_MATMUL_SIZE, repeats: int = 40, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the best of `repeats` matrix products in `dtype` on `threads` torch threads: the CPU's practical peak.

    `threads` must be torch's current thread count; it keys the cache, one measurement per thread count and process."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: the first call allocates
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where the figure comes from); None for a GPU missing from PEAK_FLOPS."""
    if device.type != "cuda":
        threads = torch.get_num_threads()
        kind, dtype = ("bf16", torch.bfloat16) if precision == "bf16" else ("fp32", torch.float32)
        return measure_cpu_peak_flops(threads, dtype=dtype), f"{kind} matmul measured on {threads} CPU thread(s)"
    name = torch.cuda.get_device_name(device)
    kind = "bf16" if precision in ("bf16", "fp16") else "fp32"
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if re.search(rf"\b{re.escape(key)}\b", name) and kind in PEAK_FLOPS[key]:
            return PEAK_FLOPS[key][kind], f"{key} {kind} data sheet"
    return None, f"{name} is not in coopstance.throughput.PEAK_FLOPS; add its peak to get MFU"


def _significant(value: float, digits: int = 4) -> float:
    """Round to significant figures: a short test run and an H200 run both keep their precision."""
    return float(f"{value:.{digits}g}")


def training_flops(model: PreTrainedModel, tokens: int, squared_lengths: int) -> float:
    """Training FLOPs for sequences with `tokens` non-padding tokens in all and `squared_lengths` = sum of s^2."""
    config = model.config
    non_embedding = model.num_parameters(exclude_embeddings=True)
    return 6 * non_embedding * tokens + 12 * config.num_hidden_layers * config.hidden_size * squared_lengths


def _proc_status_gb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> float | None:
    """Restart the peak-memory count; return the memory in use now (GiB): GPU memory allocated by torch, or process RSS."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**30
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM) to the current one
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _proc_status_gb("VmRSS")


def peak_memory_gb(device: torch.device) -> tuple[float | None, str]:
    """(peak GiB since the last reset, what was measured)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU memory allocated by torch"
    peak = _proc_status_gb("VmHWM")
    return peak, "process peak RSS" if peak is not None else "unavailable on this OS"


class ThroughputCallback(TrainerCallback):
    """Counts the tokens of every training batch (a forward pre-hook on the model) and times the training steps.

    Time spent evaluating, saving and logging is left out. Counts are per process; in DDP every process gets an
    equal share of each batch, so the rates are this process's times the world size. Memory: the peak, and how far it
    rose above the level at the start of training (gradients, optimizer state, activations).
    """

    def __init__(self, model: PreTrainedModel, device: torch.device, precision: str, world_size: int = 1) -> None:
        self.model, self.device, self.precision, self.world_size = model, device, precision, world_size
        self.memory_at_start: float | None = None
        self.peak_flops: float | None = None
        self.peak_source = ""
        self._pending: list[torch.Tensor] = []  # per batch [tokens, sum of s^2], left on the device until a log
        self._samples = self._padded = 0  # known from shapes, no device sync
        self._interval_seconds = 0.0
        self._mark = time.perf_counter()
        self.totals = {"steps": 0, "samples": 0, "tokens": 0, "padded_tokens": 0, "squared_lengths": 0, "seconds": 0.0}
        self._interval_steps = 0
        self._hook = model.register_forward_pre_hook(self._count_batch, with_kwargs=True)

    @torch.compiler.disable  # counting stays eager Python when the model is compiled
    def _count_batch(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not module.training or not torch.is_grad_enabled():  # evaluation batches are not training throughput
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        mask = kwargs.get("attention_mask")
        lengths = mask.sum(1) if mask is not None else torch.full((input_ids.shape[0],), input_ids.shape[1], device=input_ids.device)
        lengths = lengths.long()
        self._pending.append(torch.stack([lengths.sum(), (lengths * lengths).sum()]))
        self._samples += input_ids.shape[0]
        self._padded += input_ids.numel()

    def _drain(self) -> dict[str, float]:
        """Move the counts and time since the last call into the totals; return this interval's figures."""
        tokens, squares = (int(c) for c in torch.stack(self._pending).sum(0).tolist()) if self._pending else (0, 0)  # one device sync
        samples, padded, seconds, steps = self._samples, self._padded, self._interval_seconds, self._interval_steps
        self._forget_interval()
        for key, value in (("steps", steps), ("samples", samples), ("tokens", tokens), ("padded_tokens", padded),
                           ("squared_lengths", squares), ("seconds", seconds)):
            self.totals[key] += value
        return self._figures(samples, tokens, padded, squares, seconds)

    def _forget_interval(self) -> None:
        self._pending, self._samples, self._padded, self._interval_seconds, self._interval_steps = [], 0, 0, 0.0, 0

    def _figures(self, samples: int, tokens: int, padded: int, squares: int, seconds: float) -> dict[str, float]:
        if seconds <= 0 or samples == 0:
            return {}
        flops_per_s = training_flops(self.model, tokens, squares) / seconds
        figures = {
            "samples_per_second": round(samples * self.world_size / seconds, 3),
            "tokens_per_second": round(tokens * self.world_size / seconds, 1),  # non-padding tokens
            "padding_share": round(1 - tokens / padded, 4),
        }
        if self.peak_flops:
            figures["mfu"] = _significant(flops_per_s / self.peak_flops)
        memory, _ = peak_memory_gb(self.device)
        if memory is not None:
            figures["peak_memory_gb"] = round(memory, 3)
        return figures

    def summary(self) -> dict[str, Any]:
        """The run's throughput (training steps only), for metrics.json."""
        t = self.totals
        figures = self._figures(t["samples"], t["tokens"], t["padded_tokens"], t["squared_lengths"], t["seconds"])
        memory, memory_kind = peak_memory_gb(self.device)
        return {
            **figures,
            "steps_timed": t["steps"],
            "train_seconds": _significant(t["seconds"], 6),
            "samples": t["samples"] * self.world_size,
            "non_padding_tokens": t["tokens"] * self.world_size,
            "model_tflops_per_second": _significant(training_flops(self.model, t["tokens"], t["squared_lengths"]) / t["seconds"] / 1e12)
            if t["seconds"] > 0 else None,
            "peak_tflops_per_second": _significant(self.peak_flops / 1e12) if self.peak_flops else None,
            "peak_source": self.peak_source,
            "flops_formula": "6 * non-embedding params * tokens + 12 * layers * hidden * sum(s^2), non-padding tokens",
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "precision": self.precision,
            "world_size": self.world_size,
            "peak_memory": memory_kind,
            "memory_growth_gb": round(memory - self.memory_at_start, 3) if memory is not None and self.memory_at_start is not None else None,
        }

    # --- Trainer events -------------------------------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.peak_flops, self.peak_source = device_peak_flops(self.device, self.precision)
        self.memory_at_start = reset_peak_memory(self.device)
        self._mark = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        now = time.perf_counter()
        self._interval_seconds += now - self._mark
        self._interval_steps += 1
        self._mark = now

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if logs is not None and "loss" in logs:  # a training log (not evaluation, not the end-of-run summary)
            logs.update(self._drain())
        self._mark = time.perf_counter()

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._mark = time.perf_counter()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._mark = time.perf_counter()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.device.type == "cuda":  # the GPU may still be running steps the CPU has queued: count the wait for them
            waited_from = time.perf_counter()
            torch.cuda.synchronize(self.device)
            self._interval_seconds += time.perf_counter() - waited_from
        self._drain()  # the steps after the last log
        self._hook.remove()


def attach_throughput(trainer: Trainer) -> ThroughputCallback:
    """Add a ThroughputCallback to `trainer`, ahead of the loggers, so that TensorBoard and the console get its figures."""
    args = trainer.args
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    callback = ThroughputCallback(trainer.model, args.device, precision, max(args.world_size, 1))
    callbacks = trainer.callback_handler.callbacks
    # Trainer calls callbacks in list order and the reporters (TensorBoard, printer) come right after DefaultFlowCallback;
    # what on_log adds to the logs must be there before they write them.
    flow = next((i for i, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)), -1)
    callbacks.insert(flow + 1, callback)
    return callback


def shuffled_length_groups(lengths: list[int], batch_size: int, generator: torch.Generator | None = None) -> list[int]:
    """Indices in batches of similar length (transformers' mega-batch grouping), the full batches in random order.

    transformers' LengthGroupedSampler runs through each mega-batch (up to 50 batches) from its longest batch to its
    shortest. Measured on configs/tiny.yaml (README, Training speed), that order cost a third of the dev score, while the
    same batches in random order score as random batches do. A final partial batch stays last, so that the DataLoader's
    batches (of `batch_size`) keep their boundaries.
    """
    indices = get_length_grouped_indices(lengths, batch_size, generator=generator)
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    partial = batches.pop() if len(batches[-1]) < batch_size else []
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in order for i in batches[b]] + partial


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """`train.group_by_length`: batches of similar length (little padding) in random order (see shuffled_length_groups).

    Draws from torch's global generator, like transformers' own sampler, so that a resumed run replays the same order."""

    def __init__(self, lengths: list[int], batch_size: int) -> None:
        self.lengths, self.batch_size = lengths, batch_size

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(shuffled_length_groups(self.lengths, self.batch_size))


def speed_arguments(cfg: RunConfig, use_cpu: bool) -> dict[str, Any]:
    """TrainingArguments for the config's speed options (see the help of each key in coopstance/config.py)."""
    train = cfg.train
    on_gpu = not use_cpu and torch.cuda.is_available()
    return {
        "optim": "adamw_torch_fused" if train.fused_adamw else "adamw_torch",
        "torch_compile": train.torch_compile,
        # transformers 5's name for gradient checkpointing; non-reentrant by default, so frozen embeddings are fine
        "activation_checkpointing": train.gradient_checkpointing,
        "dataloader_pin_memory": train.dataloader_pin_memory and on_gpu,
    }
