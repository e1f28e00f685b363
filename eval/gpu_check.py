"""GPU check: everything a lent GPU should confirm, in one call of at most 5 minutes; prints one block for the README.

    make gpu-check                                  # on the GPU machine (about 3 minutes on one H200)
    python eval/gpu_check.py --cpu-smoke            # the same steps shrunk to seconds, on CPU (tests/test_throughput.py)

Steps (each one timed and reported, also when an earlier one failed):
  1. environment: torch, CUDA, the GPU, bf16 support, number of GPUs;
  2. `make bench-train` for mbert-size, plain Trainer defaults against our settings (eval/bench_train.py);
  3. a short real run of configs/tiny.yaml on the GPU, precision auto (bf16): train, export, evaluate the export;
  4. a 2-process DDP run of the same config, if more than one GPU is visible.
Exit code 0 when every step that ran passed (and, without --cpu-smoke, CUDA was there), else 1.

On a borrowed machine without network whose python3 already has torch: carry wheels of what it lacks (compare
`python3 -m pip list` with pyproject.toml; e.g. transformers 5.24, huggingface_hub 2.x, omegaconf, antlr4-python3-runtime),
install them with `pip install --no-index --no-deps --target /tmp/site`, export PYTHONPATH=/tmp/site:., then
`make gpu-check PY=python3`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 290  # the whole check must fit one 5-minute call
SMOKE_BUDGET_S = 900  # --cpu-smoke: a shared CPU can be slow; the smoke run checks the script, not the time


def run_step(command: list[str], timeout_s: float, log: Path) -> tuple[bool, float, str]:
    """(passed, seconds, the last lines of output); the full output goes to `log`."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1))
        output, passed = done.stdout + done.stderr, done.returncode == 0
    except subprocess.TimeoutExpired as err:  # its partial output comes as bytes even with text=True
        partial = [o.decode(errors="replace") if isinstance(o, bytes) else o or "" for o in (err.stdout, err.stderr)]
        output, passed = "".join(partial) + f"\n[gpu-check] timed out after {timeout_s:.0f} s", False
    log.write_text(output, encoding="utf-8")
    tail = "\n".join(output.strip().splitlines()[-15:])
    return passed, time.perf_counter() - start, tail


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="shrink every step and run on CPU: checks the script, not a GPU")
    parser.add_argument("--work-dir", help="where runs and logs go (default: a temporary folder, removed afterwards)")
    parser.add_argument("--json-out", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    smoke = args.cpu_smoke
    env = environment()
    results: dict[str, Any] = {"date": datetime.date.today().isoformat(), "environment": env, "steps": {}}
    python = sys.executable

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)

        def remaining() -> float:
            return (SMOKE_BUDGET_S if smoke else BUDGET_S) - (time.perf_counter() - started)

        def step(name: str, command: list[str], limit_s: float) -> dict[str, Any]:
            timeout = min(limit_s if not smoke else remaining(), remaining() - 5)
            if timeout < 10:
                results["steps"][name] = {"passed": False, "seconds": 0.0, "note": "skipped: the 5-minute budget is spent"}
                return results["steps"][name]
            passed, seconds, tail = run_step(command, timeout, work / f"{name}.log")
            results["steps"][name] = {"passed": passed, "seconds": round(seconds, 1), "command": " ".join(command)}
            print(f"[gpu-check] {name}: {'ok' if passed else 'FAILED'} in {seconds:.0f} s", flush=True)
            if not passed:
                print(tail, flush=True)
            return results["steps"][name]

        # 2. the training benchmark, mbert-size, both settings
        bench_json = work / "bench.json"
        bench = [python, "eval/bench_train.py", "--variants", "plain", "ours", "--json-out", str(bench_json)]
        bench += ["--arch", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "1", "--cpu", "--threads", "1"] if smoke else \
                 ["--arch", "mbert-size", "--steps", "40", "--warmup", "5", "--repeats", "3"]
        if step("bench_train", bench, 150)["passed"]:
            results["steps"]["bench_train"]["result"] = json.loads(bench_json.read_text(encoding="utf-8"))

        # 3. a real run end to end: train, export, evaluate the exported model
        run_name = "gpu-check"
        train = [python, "train/train.py", "--config", "configs/tiny.yaml", f"train.output_root={work}", f"train.run_name={run_name}",
                 "train.overwrite=true", "train.precision=auto"]
        train += ["train.max_steps=4", "train.bootstrap_samples=10", "train.baseline=false", "model.tiny.vocab_size=800",
                  "data.sources=[data/corpus/en.jsonl,seeds]", "data.stress_sources=[]"] if smoke else \
                 ["train.epochs=4", "train.bootstrap_samples=200"]
        if step("train", train, 120)["passed"]:
            metrics = json.loads((work / run_name / "metrics.json").read_text(encoding="utf-8"))
            results["steps"]["train"]["test"] = {k: metrics["test"][k] for k in ("topic_macro_f1", "stance_macro_f1")}
            results["steps"]["train"]["throughput"] = metrics.get("throughput")
            evaluate = [python, "eval/evaluate.py", str(work / run_name / "model"), "--split", "test", "--bootstrap", "10" if smoke else "200"]
            step("evaluate", evaluate, 90)

        # 4. DDP, where there are GPUs for it
        if env["gpu_count"] > 1:
            ddp = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train/train.py", "--config",
                   "configs/tiny.yaml", f"train.output_root={work}", "train.run_name=gpu-check-ddp", "train.overwrite=true",
                   "train.precision=auto", "train.max_steps=30", "train.bootstrap_samples=50", "train.baseline=false"]
            step("ddp_2_processes", ddp, 120)
        else:
            results["steps"]["ddp_2_processes"] = {"passed": None, "note": f"skipped: {env['gpu_count']} GPU(s) visible, DDP needs 2"}

    results["seconds"] = round(time.perf_counter() - started, 1)
    ran = [s for s in results["steps"].values() if s.get("passed") is not None]
    results["passed"] = all(s["passed"] for s in ran) and (smoke or env["cuda_available"])
    print(summary_block(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if results["passed"] else 1


def _percent(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def summary_block(results: dict[str, Any]) -> str:
    env, steps = results["environment"], results["steps"]
    device = env["gpu"] or "no GPU (CPU smoke run)"
    lines = [
        "----- GPU check: paste into README.md -----",
        f"GPU check ({results['date']}, `make gpu-check`, {results['seconds']:.0f} s, {'passed' if results['passed'] else 'FAILED'}): "
        f"{device}, {env['gpu_count']} GPU(s), {env['gpu_memory_gib'] or '-'} GiB, torch {env['torch']}, CUDA {env['cuda_version'] or '-'}, "
        f"bf16 {'yes' if env['bf16'] else 'no'}",
    ]
    bench = steps.get("bench_train", {})
    if bench.get("result"):
        r = bench["result"]
        lines.append(f"bench-train {r['arch']} (batch {r['batch_size']}, max_length {r['max_length']}, context {r['context_sentences']}, "
                     f"{r['steps']} steps, median of {r['repeats']}):")
        variants = r["variants"]
        for name, row in variants.items():
            lines.append(f"  {name:<6} {row['precision']:<5} {row['samples_per_second']:8.1f} samples/s {row['tokens_per_second']:9.0f} tokens/s "
                         f"padding {row['padding_share']:.1%}  MFU {_percent(row.get('mfu'))}  peak {row.get('peak_memory_gb') or 0:.2f} GiB  "
                         f"{row['speedup']:.2f}x")
    else:
        lines.append(f"bench-train: {bench.get('note') or 'FAILED'}")
    train = steps.get("train", {})
    if train.get("passed"):
        t, test = train.get("throughput") or {}, train["test"]
        evaluate = steps.get("evaluate", {})
        lines.append(f"tiny config on the device, train + export ({train['seconds']:.0f} s) + evaluate "
                     f"({'ok' if evaluate.get('passed') else 'FAILED'}, {evaluate.get('seconds', 0):.0f} s): test topic macro-F1 "
                     f"{test['topic_macro_f1']:.3f}, stance macro-F1 {test['stance_macro_f1']:.3f}; training "
                     f"{t.get('samples_per_second', 0):.0f} samples/s, {t.get('precision', '-')}, MFU {_percent(t.get('mfu'))}")
    else:
        lines.append(f"tiny config on the device: {train.get('note') or 'FAILED'}")
    ddp = steps.get("ddp_2_processes", {})
    lines.append(f"DDP, 2 processes: {ddp.get('note') or ('ok' if ddp.get('passed') else 'FAILED')}"
                 + (f" in {ddp['seconds']:.0f} s" if ddp.get("passed") else ""))
    lines.append("-------------------------------------------")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
