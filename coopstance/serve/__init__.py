"""`coopstance serve`: the tagging service (HTTP API and a page for analysts) on uvicorn.

    coopstance serve --model outputs/demo/model                        # http://127.0.0.1:8000/ (page), /docs (API)
    coopstance serve --model outputs/demo/model --backend onnx --port 8080 --max-chars-per-article 50000
    curl -s localhost:8000/v1/tag -H 'Content-Type: application/json' -d '{"article": "Die Minister trafen sich."}'

Endpoints: POST /v1/tag, GET /v1/labels, GET /health, GET / (the page), GET /docs (OpenAPI); details in
coopstance/serve/app.py. Requests that arrive together are tagged in one model call (--batch-wait-ms,
--max-batch-sentences; --no-batching to turn it off). A request over a limit gets 413 with a JSON error naming the
limit; a malformed one 422 naming the field. The service listens on 127.0.0.1 unless --host says otherwise; it has no
authentication, so put it behind a proxy before exposing it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from coopstance.inference import BACKENDS

DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coopstance.serve.app import Batching, Limits

    limits, batching = Limits(), Batching()
    parser.add_argument("--model", required=True, help="exported model folder (<run>/model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="onnx/onnx-int8 need `coopstance export-onnx` first")
    parser.add_argument("--workers", type=int, default=1, help="server processes, each with its own model (default: 1)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available; torch backend only)")
    parser.add_argument("--threads", type=int, help="CPU threads per worker (default: the available CPUs / workers)")
    parser.add_argument("--batch-size", type=int,
                        help="sentences per forward pass (default: 16 on CPU, where length-sorted small passes waste less padding "
                             "than one big one; 64 on a GPU)")
    group = parser.add_argument_group("micro-batching")
    group.add_argument("--batch-wait-ms", type=float, default=batching.wait_ms,
                       help=f"how long a request waits for others to share its model call (default: {batching.wait_ms:g})")
    group.add_argument("--max-batch-sentences", type=int, default=batching.max_sentences,
                       help=f"a model call takes requests until it holds this many sentences (default: {batching.max_sentences})")
    group.add_argument("--no-batching", action="store_true", help="one request per model call (for comparison)")
    group = parser.add_argument_group("limits (413 beyond them)")
    group.add_argument("--max-chars-per-article", type=int, default=limits.max_chars_per_article, help=f"default: {limits.max_chars_per_article:,}")
    group.add_argument("--max-sentences", type=int, default=limits.max_sentences,
                       help=f"sentences per request, all articles together (default: {limits.max_sentences:,})")
    group.add_argument("--max-articles", type=int, default=limits.max_articles, help=f"articles per request (default: {limits.max_articles})")
    group.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes, help=f"request body size (default: {limits.max_body_bytes:,})")
    group.add_argument("--max-queue-sentences", type=int, default=limits.max_queue_sentences,
                       help=f"sentences waiting for the model; beyond it requests get 503 (default: {limits.max_queue_sentences:,})")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request")


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from coopstance.inference import Tagger, available_cpus
    from coopstance.serve.app import Batching, Limits, create_app

    numbers = {"--port": (args.port, 0), "--workers": (args.workers, 1), "--batch-size": (args.batch_size or 1, 1),
               "--max-batch-sentences": (args.max_batch_sentences, 1), "--batch-wait-ms": (args.batch_wait_ms, 0),
               "--max-chars-per-article": (args.max_chars_per_article, 1), "--max-sentences": (args.max_sentences, 1),
               "--max-articles": (args.max_articles, 1), "--max-body-bytes": (args.max_body_bytes, 1),
               "--max-queue-sentences": (args.max_queue_sentences, 1), "--threads": (args.threads or 1, 1)}
    for name, (value, minimum) in numbers.items():
        if value < minimum:
            print(f"error: {name} must be at least {minimum} (got {value})", file=sys.stderr)
            return 2
    threads = args.threads or max(1, available_cpus() // args.workers)
    on_gpu = args.backend == "torch" and (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    batch_size = args.batch_size or (64 if on_gpu else 16)
    tagger_settings = {"model_dir": args.model, "backend": args.backend, "device": args.device, "batch_size": batch_size,
                       "num_threads": threads}
    limits = Limits(args.max_chars_per_article, args.max_sentences, args.max_articles, args.max_body_bytes, args.max_queue_sentences)
    batching = Batching(not args.no_batching, args.batch_wait_ms, args.max_batch_sentences)
    try:  # load once here, so that a wrong folder or backend stops with one line and exit code 2
        tagger = Tagger(**tagger_settings)
    except (FileNotFoundError, ValueError, ImportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    server_options = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": not args.no_access_log}
    if args.workers == 1:
        uvicorn.run(create_app(tagger, limits, batching), **server_options)
        return 0
    del tagger  # each worker process loads its own
    os.environ["COOPSTANCE_SERVE_SETTINGS"] = json.dumps(
        {"tagger": tagger_settings, "limits": asdict(limits), "batching": asdict(batching)}
    )
    uvicorn.run("coopstance.serve.app:app_from_environment", factory=True, workers=args.workers, **server_options)
    return 0
