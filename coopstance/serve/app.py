"""The tagging service: a FastAPI app around one `Tagger`, with micro-batching and request limits.

    app = create_app(Tagger("outputs/demo/model"), Limits(), Batching())
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or: coopstance serve --model outputs/demo/model

Endpoints:
    POST /v1/tag      {"sentences": [...]}, {"article": "..."} or {"articles": [{"id", "text", "lang", "meta"}, ...]};
                      answers {"articles": [{"id", "sentences": [rows], "summary": row}]}, where the rows are exactly
                      those of `coopstance predict --format jsonl` (`ArticleResult.records()`: sentence rows, then the
                      summary row; fields in the docstring of coopstance.inference)
    GET  /v1/labels   labels with definitions and thresholds (`Tagger.label_info()`)
    GET  /health      model, backend, version, limits, batching settings and counters
    GET  /            the page for analysts (static/index.html)
    GET  /docs        the OpenAPI page (served from the package, no CDN)

Micro-batching: a request's articles go into an asyncio queue; one task takes the first waiting request, adds the
requests that arrive within `Batching.wait_ms` of it (or are already waiting) until the batch holds
`Batching.max_sentences`, and runs them as one `Tagger.tag_articles` call in a worker thread, so the event loop keeps
accepting requests while the model runs. So 50 one-sentence requests that arrive together cost one model call, in
which the tagger sorts the 50 sentences by length and runs forward passes of its `batch_size` (on CPU, 16: a few
length-sorted passes waste less padding than one of 50; on a GPU, one pass of 64), not 50 calls of one sentence.

Errors are JSON, `{"error": code, "message": ..., ...}`: 413 `limit_exceeded` names the limit and the command-line
flag that sets it; 422 `invalid_request` names the field; 503 `busy` when too many sentences already wait for the
model. A failed model call answers 500 for the requests of that batch only; the service keeps running.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coopstance import __version__
from coopstance.inference import Article, ArticleResult, Tagger, segment

log = logging.getLogger("coopstance.serve")


@dataclass(frozen=True)
class Limits:
    """Per-request limits; each is set by the `coopstance serve` flag of the same name (`--max-chars-per-article`)."""

    max_chars_per_article: int = 100_000
    max_sentences: int = 2_000  # per request, all articles together (after sentence segmentation)
    max_articles: int = 100  # per request
    max_body_bytes: int = 4_000_000  # JSON escapes can take 6 bytes per CJK character
    max_queue_sentences: int = 20_000  # sentences waiting for the model, all requests together; beyond it: 503


@dataclass(frozen=True)
class Batching:
    """How requests are grouped into model calls. enabled=False: one request per model call, in arrival order."""

    enabled: bool = True
    wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_sentences: int = 256  # a batch stops taking requests once it holds this many sentences


def flag(limit: str) -> str:
    return "--" + limit.replace("_", "-")


class ServiceError(Exception):
    """An error answered as JSON: `{"error": code, "message": message, **fields}` with `status`."""

    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse({"error": self.code, "message": self.message, **self.fields}, status_code=self.status, headers=headers)


def over_limit(limit: str, value: int, maximum: int, what: str, fix: str, field_name: str | None = None) -> ServiceError:
    return ServiceError(
        413, "limit_exceeded", f"{what} is {value:,}; the limit is {maximum:,} ({limit}, set by `coopstance serve {flag(limit)}`). {fix}",
        limit=limit, max=maximum, value=value, **({"field": field_name} if field_name else {}),
    )


# ---------------------------------------------------------------------------------------------------------------
# Request and response bodies.


class ArticleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | int | None = Field(None, description="your id for the article (default: its position, from 0)")
    text: str = Field(description="the article, raw text; line breaks end sentences")
    lang: str | None = Field(None, max_length=35, description="ISO 639-1 code; default: detected from the script")
    meta: dict[str, Any] = Field(default_factory=dict, description="returned unchanged in the article's summary row")


class TagRequest(BaseModel):
    """Exactly one of `sentences` (one article, already split), `article` (one article, raw text) or `articles`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"article": "Die Handelsminister trafen sich in Washington. Sie sprachen über Halbleiter."},
        {"sentences": ["Washington added 140 Chinese chip firms to the Entity List.", "Beijing protested."], "lang": "en"},
        {"articles": [{"id": "a-1", "text": "日米韓の経済閣僚が会合を開いた。"}, {"id": "a-2", "text": "한미일 장관이 만났다."}]},
    ]})

    sentences: list[str] | None = Field(None, description="the sentences of one article, in order (tagged as given)")
    article: str | None = Field(None, description="one article, raw text")
    articles: list[ArticleIn] | None = Field(None, description="several articles, tagged together")
    id: str | int | None = Field(None, description="the id of the article given by `sentences` or `article` (default: \"0\")")
    lang: str | None = Field(None, max_length=35, description="language of `sentences` or `article`; default: detected")

    @model_validator(mode="after")
    def one_input(self) -> TagRequest:
        given = [name for name in ("sentences", "article", "articles") if getattr(self, name) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(repr(g) for g in given)}" if given else "got none"
            raise ValueError(f"give exactly one of 'sentences', 'article' or 'articles' ({found})")
        if self.articles is not None and (self.id is not None or self.lang is not None):
            raise ValueError("with 'articles', put 'id' and 'lang' inside each article")
        return self

    def to_articles(self) -> list[tuple[str, Article]]:
        """(field name for error messages, article) in request order; raises ServiceError 422 for empty text."""
        if self.sentences is not None:
            if not self.sentences:
                raise invalid("sentences", "empty list; give at least one sentence")
            for i, sentence in enumerate(self.sentences):
                if not sentence.strip():
                    raise invalid(f"sentences[{i}]", "empty sentence; remove it or fill it in")
            return [("sentences", Article(id=str(self.id if self.id is not None else 0), text="", lang=self.lang, sentences=list(self.sentences)))]
        if self.article is not None:
            if not self.article.strip():
                raise invalid("article", "empty text; paste the article")
            return [("article", Article(id=str(self.id if self.id is not None else 0), text=self.article, lang=self.lang))]
        assert self.articles is not None
        if not self.articles:
            raise invalid("articles", "empty list; give at least one article")
        out = []
        for i, item in enumerate(self.articles):
            if not item.text.strip():
                raise invalid(f"articles[{i}].text", "empty text; remove the article or fill it in")
            out.append((f"articles[{i}]", Article(id=str(item.id if item.id is not None else i), text=item.text, lang=item.lang, meta=item.meta)))
        return out


class SentenceRow(BaseModel):
    type: str = "sentence"
    article_id: str
    sentence_index: int
    start: int
    end: int
    text: str
    topics: list[str]
    stance: str
    topic_scores: dict[str, float]
    stance_scores: dict[str, float]
    truncated: bool


class SummaryRow(BaseModel):
    type: str = "article"
    article_id: str
    lang: str
    n_sentences: int
    n_truncated: int
    topic_shares: dict[str, float]
    stance_distribution: dict[str, float]
    top_sentence_per_topic: dict[str, dict[str, Any]]
    meta: dict[str, Any]


class ArticleOut(BaseModel):
    id: str
    sentences: list[SentenceRow]
    summary: SummaryRow


class TagResponse(BaseModel):
    """The rows of `coopstance predict --format jsonl`, grouped per article: its sentence rows, then its summary row."""

    articles: list[ArticleOut]


class ErrorBody(BaseModel):
    error: str
    message: str
    field: str | None = None
    limit: str | None = None


def invalid(field_name: str, problem: str) -> ServiceError:
    return ServiceError(422, "invalid_request", f"{field_name}: {problem}", field=field_name)


# ---------------------------------------------------------------------------------------------------------------
# Micro-batching.


@dataclass
class _Job:
    articles: list[Article]
    n_sentences: int
    future: asyncio.Future[list[ArticleResult]]
    enqueued_at: float


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    sentences: int = 0
    largest_batch_requests: int = 0
    largest_batch_sentences: int = 0
    failed_batches: int = 0
    model_seconds: float = 0.0


@dataclass
class MicroBatcher:
    """Groups requests that arrive together into one `Tagger.tag_articles` call, run in one worker thread."""

    tagger: Tagger
    batching: Batching
    stats: BatchStats = field(default_factory=BatchStats)
    queued_sentences: int = 0

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        # One thread: the model uses all its CPU threads per call, and calls in parallel would only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coopstance-model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_forever(), name="coopstance-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def tag(self, articles: list[Article], n_sentences: int) -> list[ArticleResult]:
        loop = asyncio.get_running_loop()
        job = _Job(articles, n_sentences, loop.create_future(), loop.time())
        self.queued_sentences += n_sentences
        self._queue.put_nowait(job)
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        size = jobs[0].n_sentences
        # The wait counts from the first request's arrival: requests that queued while the model was busy go
        # straight into the next batch without waiting again.
        deadline = jobs[0].enqueued_at + self.batching.wait_ms / 1000
        while self.batching.enabled and size < self.batching.max_sentences:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs.append(job)
            size += job.n_sentences
        return jobs

    def _tag(self, articles: list[Article]) -> tuple[list[ArticleResult], float]:
        start = time.perf_counter()
        results = list(self.tagger.tag_articles(articles))
        return results, time.perf_counter() - start

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            size = sum(job.n_sentences for job in jobs)
            self.queued_sentences -= size
            try:
                results, seconds = await loop.run_in_executor(self._executor, self._tag, [a for job in jobs for a in job.articles])
            except Exception as err:  # the model call failed: answer these requests with 500, keep serving the others
                log.exception("model call failed for a batch of %d request(s)", len(jobs))
                self.stats.failed_batches += 1
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.stats.batches += 1
            self.stats.requests += len(jobs)
            self.stats.sentences += size
            self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, len(jobs))
            self.stats.largest_batch_sentences = max(self.stats.largest_batch_sentences, size)
            self.stats.model_seconds += seconds
            start = 0
            for job in jobs:
                if not job.future.done():  # done: the client went away and its handler was cancelled
                    job.future.set_result(results[start:start + len(job.articles)])
                start += len(job.articles)


# ---------------------------------------------------------------------------------------------------------------
# Request body size: checked before the body is read (Content-Length) and while it streams in (chunked).


class BodyTooLarge(StarletteHTTPException):
    """Raised while the body streams in; an HTTPException, so that FastAPI's body parsing passes it on unchanged."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(413)
        self.error = error


class BodySizeLimit:
    """ASGI middleware: 413 with a JSON error for a body over `max_bytes`. (FastAPI's own `max_body_size` answers
    a declared oversize body with plain text, which cannot name the limit.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def error(self, size: int, declared: bool) -> ServiceError:
        what = "the request body in bytes (Content-Length)" if declared else "the request body in bytes (read so far)"
        return over_limit("max_body_bytes", size, self.max_bytes, what, "Send fewer or shorter articles per request.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.error(int(declared), declared=True).response()(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.error(received, declared=False))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as err:  # raised outside the routes' exception handlers
            if not started:
                await err.error.response()(scope, receive, send)


# ---------------------------------------------------------------------------------------------------------------
# Validation errors -> one readable message per problem, naming the field.


def field_path(loc: tuple[Any, ...]) -> str:
    """("body", "articles", 2, "text") -> "articles[2].text"; the whole body is "body"."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    inside_article = len(loc) >= 3 and loc[1] == "articles" and isinstance(loc[2], int)
    return list((ArticleIn if inside_article else TagRequest).model_fields)


def describe_error(error: dict[str, Any], content_type: str | None) -> dict[str, str]:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        return {"field": "body", "message": f"body: not valid JSON ({error.get('ctx', {}).get('error', 'decode error')}{where})"}
    path = field_path(loc)
    if kind == "extra_forbidden":
        known = _known_fields(loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else f" Known fields: {', '.join(known)}."
        return {"field": path, "message": f"{path}: unknown field.{hint}"}
    if path == "body" and kind == "missing":
        return {"field": "body", "message": 'body: empty; send a JSON object such as {"article": "..."}'}
    if kind == "missing":
        return {"field": path, "message": f"{path}: required field is missing"}
    if path == "body" and isinstance(error.get("input"), bytes):  # FastAPI parses JSON only when the header says so
        return {"field": "body", "message": "body: send a JSON object with the header Content-Type: application/json"
                + (f" (got Content-Type: {content_type})" if content_type else " (no Content-Type was sent)")}
    if path == "body" and kind in ("model_attributes_type", "model_type", "dict_type"):
        return {"field": "body", "message": f'body: expected a JSON object such as {{"article": "..."}}, got {json_type(error.get("input"))}'}
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind.endswith("_type"):
        message += f" (got {json_type(error.get('input'))})"
    return {"field": path, "message": f"{path}: {message}"}


def json_type(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def unparsable_body(err: StarletteHTTPException) -> ServiceError | None:
    """FastAPI answers a body that `json.loads` rejects with anything but JSONDecodeError as a bare 400; name the cause."""
    cause = err.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return invalid("body", f"not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset {cause.start}); send UTF-8 JSON")
    if isinstance(cause, RecursionError):
        return invalid("body", "JSON nested too deeply")
    return None


# ---------------------------------------------------------------------------------------------------------------
# The app.


def count_sentences(articles: list[tuple[str, Article]], limits: Limits) -> int:
    """Sentences in the request (segmenting raw articles as the tagger will); 413 past the limits."""
    total = 0
    for where, article in articles:
        chars = len(" ".join(article.sentences)) if article.sentences is not None else len(article.text)
        if chars > limits.max_chars_per_article:
            text_field = where if where in ("sentences", "article") else f"{where}.text"
            raise over_limit("max_chars_per_article", chars, limits.max_chars_per_article, f"the length of {text_field} in characters",
                             "Split the article into parts, or send the sentences you need.", text_field)
        total += len(article.sentences) if article.sentences is not None else len(segment(article.text, article.lang))
        if total > limits.max_sentences:
            raise over_limit("max_sentences", total, limits.max_sentences, f"the number of sentences in this request (up to {where})",
                             "Send the articles in several requests, or split the sentences over several requests.")
    return total


def _static_page() -> str:
    return resources.files("coopstance.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(tagger: Tagger, limits: Limits | None = None, batching: Batching | None = None) -> FastAPI:
    limits = limits or Limits()
    batching = batching or Batching()
    page = _static_page()
    folder = tagger.model_dir.resolve()
    model_name = folder.parent.name if folder.name == "model" else folder.name  # <run>/model: the run's name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = MicroBatcher(tagger, batching)  # its queue and task belong to the server's event loop
        app.state.batcher.start()
        yield
        await app.state.batcher.stop()

    app = FastAPIOffline(
        title="coopstance", version=__version__, lifespan=lifespan,
        description="Tags news sentences with cooperation topics and stance toward China. The page for analysts is at `/`.",
    )
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, err: ServiceError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [describe_error(e, request.headers.get("content-type")) for e in err.errors()]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        more = f" (and {len(problems) - 1} more problem(s), listed in 'errors')" if len(problems) > 1 else ""
        return JSONResponse({"error": "invalid_request", "message": first["message"] + more, "field": first["field"], "errors": problems},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if isinstance(err, BodyTooLarge):
            return err.error.response()
        if err.status_code == 400 and (problem := unparsable_body(err)):
            return problem.response()
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = {404: f"no such endpoint: {request.url.path}; see /docs for the endpoints",
                   405: f"{request.method} is not allowed on {request.url.path}; see /docs"}.get(err.status_code, str(err.detail))
        return JSONResponse({"error": codes.get(err.status_code, "http_error"), "message": message}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal_error", "message": f"the model call failed ({type(err).__name__}: {err}); see the server log"},
                            status_code=500)

    errors = {413: {"model": ErrorBody, "description": "over a limit (named in 'limit')"},
              422: {"model": ErrorBody, "description": "malformed request (the field is named in 'field')"},
              503: {"model": ErrorBody, "description": "too many sentences waiting for the model; retry"}}

    @app.post("/v1/tag", response_model=TagResponse, responses=errors)
    async def tag(body: TagRequest) -> JSONResponse:
        """Tag one or more articles; the rows are those of `coopstance predict --format jsonl`, grouped per article."""
        articles = body.to_articles()
        if len(articles) > limits.max_articles:
            raise over_limit("max_articles", len(articles), limits.max_articles, "the number of articles", "Send them in several requests.",
                             "articles")
        if all(article.sentences is not None for _, article in articles):  # pre-split: nothing to segment, no thread hop
            n_sentences = count_sentences(articles, limits)
        else:  # segmentation takes a few ms per article: off the event loop
            n_sentences = await run_in_threadpool(count_sentences, articles, limits)
        batcher: MicroBatcher = app.state.batcher
        if batcher.queued_sentences + n_sentences > limits.max_queue_sentences:
            raise ServiceError(503, "busy", f"{batcher.queued_sentences:,} sentences are waiting for the model (limit "
                               f"max_queue_sentences={limits.max_queue_sentences:,}); retry in a moment", limit="max_queue_sentences")
        results = await batcher.tag([article for _, article in articles], n_sentences)
        out = []
        for result in results:
            rows = result.records()
            out.append({"id": result.article.id, "sentences": rows[:-1], "summary": rows[-1]})
        return JSONResponse({"articles": out})

    @app.get("/v1/labels")
    async def labels() -> dict[str, Any]:
        """Topic and stance labels with their definitions, the tuned topic thresholds, and the model's input settings."""
        return tagger.label_info()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Model, backend and version; the limits and batching settings; counters since start."""
        batcher: MicroBatcher = app.state.batcher
        return {
            "status": "ok", "model": str(tagger.model_dir), "model_name": model_name,
            "backend": tagger.backend, "version": __version__, "limits": asdict(limits), "batching": asdict(batching),
            "tagger_batch_size": tagger.batch_size,
            "stats": {**asdict(batcher.stats), "queued_sentences": batcher.queued_sentences},
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def app_from_environment() -> FastAPI:
    """The app for `uvicorn --factory` (used by `coopstance serve --workers N`): settings from COOPSTANCE_SERVE_SETTINGS."""
    import os

    settings = json.loads(os.environ["COOPSTANCE_SERVE_SETTINGS"])
    tagger = Tagger(**settings["tagger"])
    return create_app(tagger, Limits(**settings["limits"]), Batching(**settings["batching"]))
