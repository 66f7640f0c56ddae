"""The HTTP service: FastAPI over an onnxruntime generator, hot-swappable without dropping requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Annotated, Literal

import anyio
import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ganops.config import ServeParams
from ganops.latents import MAX_TRUNCATION, MIN_TRUNCATION
from ganops.pixels import to_uint8
from ganops.serving.locate import parse_models_uri
from ganops.serving.runtime import GenerationTimeout, OnnxGenerator
from ganops.visualize import grid_png, tile_shape

log = logging.getLogger(__name__)
MAX_SEED = 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
MODEL_VERSION_HEADER = "X-Model-Version"  # on every generated response: the version that made it
# a JSON number, never a string or a bool; NaN and Infinity (which Python's json parser accepts) refused
LatentValue = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: StrictInt = Field(1, ge=1, description="number of images; at most serve.max_batch. With z: len(z), "
                         "and when sent as well it must equal len(z)")
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED, description="the same seed gives the same images; not with z")
    z: list[list[LatentValue]] | None = Field(
        None, min_length=1, description="explicit latent vectors instead of a seed: n rows of latent_dim finite "
        "numbers (float32 range), e.g. for interpolation or to reproduce an image made elsewhere"
    )
    labels: StrictInt | list[StrictInt] | None = Field(
        None, description="class of every image (one int) or of each image (a list of n); default: classes in turn"
    )
    truncation: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=MIN_TRUNCATION, le=MAX_TRUNCATION)] | None = Field(
        None, description="the truncation trick's psi: latent values beyond ±psi are redrawn (from the seed's own "
        "stream) until within; smaller: more typical, less varied images; leave out for none. Not with z"
    )
    format: Literal["png", "array", "floats"] = Field(
        "png", description="png: one grid image; array: uint8 NCHW, base64; floats: the generator's float32 output "
        "in [-1, 1] as JSON numbers, NCHW nested lists"
    )

    @model_validator(mode="after")
    def _z_excludes_n_and_seed(self) -> GenerateRequest:
        if self.z is None:
            return self
        if "seed" in self.model_fields_set:
            raise ValueError("seed and z are exclusive: send a seed (the latents are drawn from it) or z, not both")
        if self.truncation is not None:
            raise ValueError("truncation applies to the latents drawn from a seed: with z, send them truncated")
        if "n" in self.model_fields_set and self.n != len(self.z):
            raise ValueError(f"n={self.n} but z has {len(self.z)} rows: with z, n is len(z) (leave n out)")
        if max(map(abs, chain.from_iterable(self.z)), default=0.0) > FLOAT32_MAX:
            row, column = next((i, j) for i, values in enumerate(self.z) for j, value in enumerate(values)
                               if abs(value) > FLOAT32_MAX)
            raise ValueError(f"z[{row}][{column}] = {self.z[row][column]:g} is outside float32's range "
                             f"(magnitude at most {FLOAT32_MAX:.8g})")
        self.n = len(self.z)
        return self


@dataclass(frozen=True)
class Served:
    """One loaded model with what describes it, swapped as a whole: a reader never pairs one
    version's generator with another's registry entry."""

    generator: OnnxGenerator
    version: str
    registry: dict | None
    stamp: tuple


class ModelSource:
    """The current generator, reloaded when what the locator points at changes (a new file at the
    path, the registry alias moved); a request keeps the ``Served`` it started with, so a swap never
    drops or mixes in-flight requests. A new model that fails to load, for any reason, is logged and
    tried again with exponential backoff (``retry_base_s`` doubling up to ``retry_max_s``) while the
    last good one keeps serving; ``stale`` says that the served model is not the one pointed at."""

    def __init__(self, locator, threads: int | None, retry_base_s: float = 2.0, retry_max_s: float = 60.0,
                 clock=time.monotonic) -> None:
        self.locator, self.threads = locator, threads
        self.retry_base_s, self.retry_max_s, self._clock = retry_base_s, retry_max_s, clock
        self._lock = threading.Lock()
        self.served: Served | None = None
        self.pointed_at: tuple | None = None  # the locator's last stamp: what should be served
        self.last_error: str | None = None
        self.failures = 0  # consecutive failed loads of ``pointed_at``
        self.retry_at: float | None = None
        self.refresh()

    @property
    def generator(self) -> OnnxGenerator | None:
        return self.served.generator if self.served is not None else None

    @property
    def stale(self) -> bool:
        """A model is served, but not the one the locator points at (its load failed, or the locator
        itself can't be read)."""
        if self.served is None:
            return False
        return self.last_error is not None or (self.pointed_at is not None and self.pointed_at != self.served.stamp)

    def refresh(self) -> bool:
        """Load what the locator points at when it changed; True when a new model is served. Never
        raises: every failure is logged and kept in ``last_error``."""
        with self._lock:
            try:
                stamp = self.locator.stamp()
            except Exception as error:
                self._failed(f"cannot read {self.locator.uri}: {_describe(error)}", backoff=False)
                return False
            if stamp is None:  # the file is gone: keep what is served
                self.pointed_at = None
                self.last_error = f"model file not found: {self.locator.uri}"
                return False
            if stamp != self.pointed_at:
                self.pointed_at, self.failures, self.retry_at = stamp, 0, None
            if self.served is not None and stamp == self.served.stamp:
                self.last_error = None
                return False
            if self.retry_at is not None and self._clock() < self.retry_at:
                return False  # backing off after a failed load of this same model
            try:
                path, registry_version = self.locator.fetch()
                generator = OnnxGenerator(path, intra_op_threads=self.threads)
                version = registry_version or hashlib.sha256(path.read_bytes()).hexdigest()[:12]
                served = Served(generator, version, self.locator.details, stamp)
            except Exception as error:  # a bad file, a spec from a newer ganops, a 503 from the registry ...
                self._failed(_describe(error), backoff=True)
                return False
            self.served, self.failures, self.retry_at, self.last_error = served, 0, None, None
        log.info("serving %s (version %s, providers %s)", self.locator.uri, version, generator.providers)
        return True

    def _failed(self, message: str, backoff: bool) -> None:
        self.last_error = message
        self.failures += 1
        delay = min(self.retry_base_s * 2 ** (self.failures - 1), self.retry_max_s)
        if backoff:
            self.retry_at = self._clock() + delay
        if self.failures & (self.failures - 1) == 0:  # failures 1, 2, 4, 8, ...: seen, without a flood
            current = f"version {self.served.version}" if self.served is not None else "no model"
            retry = f"next try in {delay:.1f} s" if backoff else "trying again at the next check"
            log.error("keeping the current model (%s): %s; failure %d, %s", current, message, self.failures, retry)

    def status(self) -> dict:
        """The reload state, for the keyed /v1/model."""
        retry_in = None if self.retry_at is None else max(0.0, round(self.retry_at - self._clock(), 1))
        return {"stale": self.stale, "error": self.last_error, "failures": self.failures, "retry_in_s": retry_in}


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip()[:500]}"


class Busy(Exception):
    """No generation slot within the bounds: answered 503 with Retry-After."""


class Abandoned(Exception):
    """The request was cancelled while its thread waited for a slot: nobody reads an answer."""


class GenerationLimiter:
    """At most ``max_concurrent`` generations run at once and ``max_queue`` more wait for a slot, each
    at most ``wait_s``; a request beyond either bound is refused at once (Busy), so memory and
    threads stay bounded however many clients call. The service admits on its event loop, before a
    request takes a worker thread: a refusal costs no thread. (Admitted requests wait for their slot
    in a worker thread: with max_concurrent + max_queue above the thread pool's 40, they can fill it.)"""

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a slot is freed or a waiter cancelled
        self.admitted = 0  # running or waiting
        self.running = 0
        self.peak_running = 0
        self.rejected = 0

    @contextmanager
    def admission(self):
        """Counts one request as admitted (running or waiting), or refuses it when the bounds are full."""
        with self._lock:
            if self.admitted >= self.max_concurrent + self.max_queue:
                self.rejected += 1
                raise Busy(f"{self.max_concurrent} generations running and {self.max_queue} waiting "
                           "(serve.max_concurrent, serve.max_queue)")
            self.admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self.admitted -= 1

    @contextmanager
    def generation(self, wait_s: float, timeout_s: float | None = None, cancelled: threading.Event | None = None):
        """One of the ``max_concurrent`` slots, waited for at most ``wait_s`` (by an admitted request:
        what is left of its ``timeout_s``); a request ``cancelled`` meanwhile stops waiting (Abandoned)."""
        cancelled = cancelled or threading.Event()
        with self._changed:
            free = self._changed.wait_for(lambda: cancelled.is_set() or self.running < self.max_concurrent, wait_s)
            if cancelled.is_set():  # before a free slot: a cancelled request never generates
                raise Abandoned("cancelled while waiting for a generation slot")
            if not free:
                self.rejected += 1
                raise Busy(f"no generation slot free within {wait_s if timeout_s is None else timeout_s:g} s "
                           "(serve.request_timeout_s)")
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        try:
            yield
        finally:
            with self._changed:
                self.running -= 1
                self._changed.notify()  # one waiter takes the slot (a cancelled one is woken by abandon, not here)

    def abandon(self, cancelled: threading.Event) -> None:
        """Tells the thread of a request that was cancelled to stop waiting for a slot."""
        with self._changed:
            cancelled.set()
            self._changed.notify_all()  # every waiter checks: the cancelled one leaves, the others wait on

    @contextmanager
    def slot(self, wait_s: float):
        """Admission and a generation slot together."""
        with self.admission(), self.generation(wait_s):
            yield


def response_bound(fmt: str, shape: tuple[int, int, int, int]) -> int:
    """At most how many bytes the response to a request for images of ``shape`` (N, C, H, W) in
    format ``fmt`` takes, known before generating."""
    values = math.prod(shape)
    if fmt == "floats":  # a float32 in shortest form is at most 15 characters ("-1.2345678e-10") plus a comma
        return 16 * values + 1024
    if fmt == "array":
        return 4 * -(-values // 3) + 1024
    rows = max(1, round(shape[0] ** 0.5))
    height, width, channels = tile_shape(shape, rows)
    return (height * (width * channels + 1)) * 101 // 100 + 1024  # PNG: filter byte per row, zlib's worst case


class BodySizeLimit:
    """413 for bodies over the limit, by Content-Length or by counting a streamed body. The body
    (small, by this very limit) is read here first and handed on whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if declared is not None and int(declared) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        except ValueError:
            await JSONResponse({"detail": "invalid Content-Length"}, status_code=400)(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequireKey:
    """With the key's environment variable set, 401 for every HTTP request that does not send the key as
    X-API-Key, whatever its path: the API, FastAPI's docs and schema, a route added later, a path that is
    no route (a WebSocket is closed with 1008 before it is accepted). The probes alone answer without
    it. Checked before the body is read."""

    OPEN_PATHS = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: ASGIApp, key_env: str) -> None:
        self.app, self.key_env = app, key_env

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in self.OPEN_PATHS and not self._has_key(scope):
            if scope["type"] == "websocket":  # closed before it is accepted: 1008, policy violation
                await WebSocketClose(code=1008, reason="missing or wrong X-API-Key")(scope, receive, send)
                return
            await JSONResponse({"detail": "missing or wrong X-API-Key"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _has_key(self, scope: Scope) -> bool:
        expected = os.environ.get(self.key_env)
        if not expected:
            return True
        sent = next((value for name, value in scope["headers"] if name == b"x-api-key"), None)
        return sent is not None and hmac.compare_digest(sent, expected.encode())


class ServiceRoutes:
    """What the service's routes do, with the state they share: the model source, the serve settings
    and the generation limiter. ``create_app`` binds each handler to its path."""

    def __init__(self, source: ModelSource, settings: ServeParams) -> None:
        self.source, self.settings = source, settings
        self.limiter = GenerationLimiter(settings.max_concurrent, settings.max_queue)
        # a test's hook: called in a request's worker thread with the snapshot it holds, as soon as it has a thread
        self.before_generating: Callable[[Served], object] = lambda served: None

    @asynccontextmanager
    async def reloading(self, app: FastAPI):
        """The app's lifespan: while it runs, the locator is checked every serve.reload_interval_s."""
        watcher = asyncio.create_task(self._watch())
        yield
        watcher.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                await asyncio.to_thread(self.source.refresh)
            except Exception:  # refresh never raises; if it ever does, the watcher still lives
                log.exception("model reload check failed; watching on")

    def current(self) -> Served:
        served = self.source.served
        if served is None:
            raise HTTPException(503, detail=f"no model loaded: {self.source.last_error or 'file missing'}")
        return served

    # The cheap handlers are coroutines: they answer on the event loop, never waiting for a worker thread.
    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        # unauthenticated: the state only, no paths, URLs or error text (those are in the keyed /v1/model)
        served = self.source.served
        if served is None:
            return JSONResponse({"status": "not ready", "stale": False}, status_code=503)
        stale = self.source.stale
        ready = not stale or self.settings.ready_when_stale
        return JSONResponse({"status": "stale" if stale else "ready", "version": served.version, "stale": stale},
                            status_code=200 if ready else 503)

    def model_info(self) -> dict:
        served = self.current()  # one snapshot: this version's spec, metadata and registry entry together
        generator, settings, limiter = served.generator, self.settings, self.limiter
        spec = generator.spec
        metadata = generator.metadata
        inputs = {"z": {"dtype": "float32", "shape": ["n", spec.latent_dim]}}
        shape = ["n", spec.channels, spec.resolution, spec.resolution]
        if spec.conditional:
            inputs["labels"] = {"dtype": "int64", "shape": ["n"], "range": [0, spec.num_classes - 1]}
        return {
            "name": metadata.get("ganops.model_name", _model_name(self.source.locator.uri)),
            "version": metadata.get("ganops.model_version", served.version),
            # the registry entry's evaluation (what register judged it by), else the one the file was exported with
            "metrics": _json_or_empty((served.registry or {}).get("evaluation"))
            or _json_or_empty(metadata.get("ganops.metrics")),
            "registry": {k: v for k, v in (served.registry or {}).items() if k != "evaluation"} or None,
            "reload": self.source.status(),
            "load": {"running": limiter.running, "waiting": limiter.admitted - limiter.running,
                     "peak_running": limiter.peak_running, "rejected": limiter.rejected,
                     "max_concurrent": limiter.max_concurrent, "max_queue": limiter.max_queue},
            "providers": generator.providers,
            "input": inputs,
            # the default shape and dtype (format "array"), and every format there is
            "output": {"dtype": "uint8", "shape": shape, "layout": "NCHW", "formats": {
                "png": {"media_type": "image/png", "content": "one grid image of the n images, 8-bit"},
                "array": {"dtype": "uint8", "shape": shape, "layout": "NCHW", "encoding": "base64 of the raw bytes"},
                "floats": {"dtype": "float32", "shape": shape, "layout": "NCHW", "range": [-1, 1],
                           "encoding": "JSON numbers (shortest form that rounds back to the same float32)"},
            }},
            "classes": spec.class_names,
            "max_batch": settings.max_batch,
            "max_response_bytes": settings.max_response_bytes,
        }

    async def generate(self, request: GenerateRequest) -> Response:
        served = self.current()  # held for the whole request: a model swap can't pull it away
        generator, settings = served.generator, self.settings
        if request.n > settings.max_batch:
            what = f"z has {request.n} rows" if request.z is not None else f"n={request.n}"
            raise HTTPException(422, detail=f"{what}, over serve.max_batch={settings.max_batch}")
        spec = generator.spec
        bound = response_bound(request.format, (request.n, spec.channels, spec.resolution, spec.resolution))
        if bound > settings.max_response_bytes:
            raise HTTPException(422, detail=f"n={request.n} images as {request.format} take up to {bound} bytes, over "
                                f"serve.max_response_bytes={settings.max_response_bytes}: ask for fewer or use png/array")
        deadline = time.monotonic() + settings.request_timeout_s
        try:
            with self.limiter.admission():  # on the event loop: refused here, a request takes no thread
                return await self.in_thread(served, request, deadline)
        except (Busy, GenerationTimeout) as error:
            raise HTTPException(503, detail=f"busy: {error}; try again later",
                                headers={"Retry-After": str(settings.retry_after_s)}) from None

    async def in_thread(self, served: Served, request: GenerateRequest, deadline: float) -> Response:
        """``generated_response`` in a worker thread. Cancelled, the request tells its thread to stop
        waiting for a slot and waits for the thread to end before the cancellation goes on: its place
        in the limiter (and the thread pool's) stays taken as long as the thread runs."""
        cancelled = threading.Event()
        work = asyncio.ensure_future(run_in_threadpool(self.generated_response, served, request, deadline, cancelled))
        try:
            return await asyncio.shield(work)  # a cancellation ends this await, not the thread's task
        except asyncio.CancelledError:
            self.limiter.abandon(cancelled)
            await _finished(work)
            raise

    def generated_response(self, served: Served, request: GenerateRequest, deadline: float,
                           cancelled: threading.Event) -> Response:
        """In a worker thread: wait for a slot (unless ``cancelled`` first), generate, encode."""
        self.before_generating(served)  # the tests' hook: the model may be swapped from here on
        generator = served.generator
        z = generator.latents(request.n, request.seed, request.truncation) if request.z is None else request.z
        seed = request.seed if request.z is None else None
        try:
            with self.limiter.generation(max(0.0, deadline - time.monotonic()), self.settings.request_timeout_s,
                                         cancelled):
                floats, labels = generator.generate(z, request.labels, timeout_s=max(0.0, deadline - time.monotonic()))
        except ValueError as error:
            raise HTTPException(422, detail=str(error)) from None
        headers = {MODEL_VERSION_HEADER: served.version}
        label_list = labels.tolist() if labels is not None else None
        if request.format == "floats":
            return Response(orjson.dumps({
                "shape": list(floats.shape), "dtype": "float32", "layout": "NCHW", "range": [-1, 1],
                "labels": label_list, "seed": seed, "images": np.ascontiguousarray(floats, dtype=np.float32),
            }, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json", headers=headers)
        images = to_uint8(floats)
        if request.format == "png":
            rows = max(1, round(request.n ** 0.5))
            return Response(grid_png(images, rows), media_type="image/png", headers=headers)
        return JSONResponse({
            "shape": list(images.shape), "dtype": "uint8", "layout": "NCHW", "labels": label_list,
            "seed": seed, "data": base64.b64encode(images.tobytes()).decode(),
        }, headers=headers)


async def _finished(work: asyncio.Future) -> None:
    """Waits until ``work`` is done, whatever cancels the waiting task meanwhile: anyio's cancellation
    is held off by the shield, asyncio's own (``Task.cancel``, which that shield lets through) is let pass."""
    with anyio.CancelScope(shield=True):
        while not work.done():
            try:
                await asyncio.wait([work])
            except asyncio.CancelledError:
                continue  # the caller re-raises its cancellation once the work is done
    if not work.cancelled():
        work.exception()  # retrieved: nobody reads what a cancelled request's thread answered or raised


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler, except that a NaN or Infinity the client sent (Python's json parser
    # accepts them) is echoed as a string: strict JSON has no such numbers, so they can't be written back
    return JSONResponse({"detail": _json_safe(jsonable_encoder(error.errors()))}, status_code=422)


def create_app(source: ModelSource, settings: ServeParams | None = None) -> FastAPI:
    """The service for the model behind ``source`` (its locator: an ONNX file path or a registry URI
    such as models:/name@champion), reloaded every serve.reload_interval_s."""
    settings = settings or ServeParams()
    routes = ServiceRoutes(source, settings)
    app = FastAPI(title="ganops generator service", version="1", lifespan=routes.reloading)
    app.state.limiter, app.state.routes = routes.limiter, routes
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequireKey, key_env=settings.api_key_env)  # added last: runs first
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_api_route("/healthz", routes.healthz, methods=["GET"])
    app.add_api_route("/readyz", routes.readyz, methods=["GET"])
    app.add_api_route("/v1/model", routes.model_info, methods=["GET"])
    app.add_api_route("/v1/generate", routes.generate, methods=["POST"],
                      responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    return app


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _model_name(uri: str) -> str:
    ref = parse_models_uri(uri)
    return ref.name if ref is not None else Path(uri).stem


def _json_or_empty(text: str | None) -> dict:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
