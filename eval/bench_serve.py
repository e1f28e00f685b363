"""Load test of `coopstance serve` on loopback: requests/s and latency with micro-batching on and off, side by side.

    make bench-serve                                             # tiny random-init BERT (configs/tiny.yaml)
    python eval/bench_serve.py --model outputs/demo/model        # a fine-tuned model folder
    python eval/bench_serve.py --encoder models/multilingual-e5-small --requests 500    # the real encoder, random head
    python eval/bench_serve.py --clients 50 --requests 2000 --repeats 3 --sentences-per-request 1

Two servers run as separate processes on 127.0.0.1 (free ports): one as `coopstance serve` starts by default
(batching on), one with --no-batching. Each run sends a fixed number of requests (one test-split sentence each, by
default) from a fixed number of concurrent clients (asyncio, one keep-alive connection each) and stops by itself;
runs alternate between the two servers so that a busy moment on a shared machine hits both alike. The table has the
median over runs of requests/s and of the p50/p95/p99 latency, all errors (non-200 answers, timeouts, refused
connections) summed over the runs, and how many requests shared a model call (from the servers' /health counters).
Nothing but loopback is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from bench_inference import cpu_name, encoder_model_dir, tiny_model_dir  # the sibling script (eval/ is on sys.path when run as a script)

from coopstance.data import group_articles, load_records, load_splits, split_records
from coopstance.inference import available_cpus
from coopstance.labels import load_schema

HOST = "127.0.0.1"  # loopback only, by design


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "coopstance", "serve", "--model", str(model_dir), "--host", HOST, "--port", str(port),
               "--no-access-log", "--log-level", "warning", *args]
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit(f"server did not start within 180 s:\n{log.read_text()[-2000:]}")


class Connection:
    """A minimal HTTP/1.1 keep-alive client for POST /v1/tag. httpx costs about as much CPU per request as the server
    does (~4 ms here), so on 2 shared cores it would starve the server it measures; this costs a tenth of that."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(b"POST /v1/tag HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (self.host.encode(), len(body), body))
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        if length is None:
            raise ConnectionError("answer without Content-Length")
        return int(head[9:12]), await self.reader.readexactly(int(length.group(1)))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(url: str, bodies: list[bytes], clients: int, requests: int, timeout: float, deadline_s: float) -> dict:
    """Send `requests` POST /v1/tag from `clients` concurrent clients; latencies of the successful ones, errors counted."""
    latencies: list[float] = []
    errors = 0
    next_index = 0
    stop_at = time.perf_counter() + deadline_s

    async def client() -> None:
        nonlocal errors, next_index
        connection = Connection(url)
        while next_index < requests and time.perf_counter() < stop_at:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            start = time.perf_counter()
            try:
                status, answer = await asyncio.wait_for(connection.post(body), timeout)
                ok = status == 200 and answer.startswith(b'{"articles":')
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
                connection.close()  # a fresh connection for the next request
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    errors += requests - next_index  # not sent before the deadline
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="exported model folder (default: a tiny random-init BERT built here)")
    source.add_argument("--encoder", help="base encoder folder; a random coopstance head is put on it (speed only)")
    parser.add_argument("--max-length", type=int, default=96, help="max_seq_length for --encoder (configs/e5-small.yaml: 128)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode, interleaved")
    parser.add_argument("--sentences-per-request", type=int, default=1)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per server (default 1: the load generator needs a core too, and torch with more threads "
                             "than free cores waits on itself)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take before it counts as an error")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds one run may take; unsent requests count as errors")
    args = parser.parse_args()

    schema = load_schema()
    records = load_records(["data/corpus", "seeds"], schema)
    test = split_records(records, load_splits("data/splits.json"))[0]["test"]
    sentences = [r.text for rs in group_articles(test).values() for r in rs]
    k = args.sentences_per_request
    bodies = [json.dumps({"sentences": sentences[i:i + k]}, ensure_ascii=False).encode() for i in range(0, len(sentences) - k + 1, k)]

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir, label = Path(args.model), args.model
        elif args.encoder:
            model_dir, label = encoder_model_dir(args.encoder, args.max_length, Path(tmp) / "model"), f"{args.encoder} + random head"
        else:
            model_dir, label = tiny_model_dir([r.text for r in records], Path(tmp) / "model"), "tiny random-init BERT (configs/tiny.yaml)"
        modes = {
            f"batching on (wait {args.batch_wait_ms:g} ms)": ["--batch-wait-ms", str(args.batch_wait_ms), "--threads", str(args.threads)],
            "batching off (--no-batching)": ["--no-batching", "--threads", str(args.threads)],
        }
        servers = {name: start_server(model_dir, Path(tmp) / f"server{i}.log", *flags) for i, (name, flags) in enumerate(modes.items())}
        try:
            for _, url in servers.values():  # warm-up: first calls allocate and compile kernels
                asyncio.run(load(url, bodies, args.clients, min(200, args.requests), args.timeout, args.deadline))
            before = {name: httpx.get(url + "/health").json()["stats"] for name, (_, url) in servers.items()}
            runs: dict[str, list[dict]] = {name: [] for name in servers}
            for _ in range(args.repeats):
                for name, (_, url) in servers.items():
                    runs[name].append(asyncio.run(load(url, bodies, args.clients, args.requests, args.timeout, args.deadline)))
            after = {name: httpx.get(url + "/health").json()["stats"] for name, (_, url) in servers.items()}
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)

    median = {name: {key: statistics.median(r[key] for r in rs) for key in ("rps", "p50", "p95", "p99")} for name, rs in runs.items()}
    print(f"model: {label}; {args.clients} concurrent clients, {args.requests:,} requests of {k} sentence(s) per run, "
          f"median of {args.repeats} interleaved runs per mode")
    print(f"hardware: {cpu_name()}, {available_cpus()} CPU(s) available ({os.cpu_count()} visible), shared by the server ({args.threads} "
          f"thread(s)) and the load generator; loopback HTTP\n")
    print(f"| {'mode':<30} | requests/s | p50 ms | p95 ms | p99 ms | errors | requests per model call | model ms per request |")
    print(f"|{'-' * 32}|-----------:|-------:|-------:|-------:|-------:|------------------------:|---------------------:|")
    for name in runs:
        m = median[name]
        calls = after[name]["batches"] - before[name]["batches"]
        served = after[name]["requests"] - before[name]["requests"]
        per_call = served / calls if calls else float("nan")
        model_ms = (after[name]["model_seconds"] - before[name]["model_seconds"]) * 1000 / served if served else float("nan")
        errors = sum(r["errors"] for r in runs[name])
        print(f"| {name:<30} | {m['rps']:10.1f} | {m['p50']:6.1f} | {m['p95']:6.1f} | {m['p99']:6.1f} | {errors:6d} "
              f"| {per_call:23.1f} | {model_ms:20.2f} |")
    on, off = (median[name]["rps"] for name in runs)
    print(f"\nbatching on / off: {on / off:.2f}x requests/s")


if __name__ == "__main__":
    main()
