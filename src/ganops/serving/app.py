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
from contextlib import asynccontextmanager
from itertools import chain
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ganops import GanopsError
from ganops.config import ServeParams
from ganops.pixels import to_uint8
from ganops.serving.locate import parse_models_uri
from ganops.serving.runtime import OnnxGenerator
from ganops.visualize import grid_png

log = logging.getLogger(__name__)
MAX_SEED = 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
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
        if "n" in self.model_fields_set and self.n != len(self.z):
            raise ValueError(f"n={self.n} but z has {len(self.z)} rows: with z, n is len(z) (leave n out)")
        if max(map(abs, chain.from_iterable(self.z)), default=0.0) > FLOAT32_MAX:
            row, column = next((i, j) for i, values in enumerate(self.z) for j, value in enumerate(values)
                               if abs(value) > FLOAT32_MAX)
            raise ValueError(f"z[{row}][{column}] = {self.z[row][column]:g} is outside float32's range "
                             f"(magnitude at most {FLOAT32_MAX:.8g})")
        self.n = len(self.z)
        return self


class ModelSource:
    """The current generator, reloaded when what the locator points at changes (a new file at the
    path, the registry alias moved); a request keeps the instance it started with, so a swap never
    drops or mixes in-flight requests. A bad new model is refused and the last good one stays."""

    def __init__(self, locator, threads: int | None) -> None:
        self.locator, self.threads = locator, threads
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self.generator: OnnxGenerator | None = None
        self.version = ""
        self.registry: dict | None = None
        self.last_error: str | None = None
        self.refresh()

    def refresh(self) -> bool:
        try:
            stamp = self.locator.stamp()
        except GanopsError as error:
            self.last_error = str(error)
            return False
        if stamp is None or stamp == self._stamp:
            return False
        with self._lock:
            try:
                path, registry_version = self.locator.fetch()
                generator = OnnxGenerator(path, intra_op_threads=self.threads)
                version = registry_version or hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            except GanopsError as error:
                self.last_error = str(error)
                log.error("keeping the current model: %s", error)
                self._stamp = stamp
                return False
            self.generator, self.version, self._stamp, self.last_error = generator, version, stamp, None
            self.registry = self.locator.details
        log.info("serving %s (version %s, providers %s)", self.locator.uri, version, generator.providers)
        return True


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


def create_app(source: ModelSource, settings: ServeParams | None = None) -> FastAPI:
    """The service for the model behind ``source`` (its locator: an ONNX file path or a registry URI
    such as models:/name@champion), reloaded every serve.reload_interval_s."""
    settings = settings or ServeParams()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def watch() -> None:
            while True:
                await asyncio.sleep(settings.reload_interval_s)
                await asyncio.to_thread(source.refresh)

        watcher = asyncio.create_task(watch())
        yield
        watcher.cancel()

    app = FastAPI(title="ganops generator service", version="1", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, except that a NaN or Infinity the client sent (Python's json parser
        # accepts them) is echoed as a string: strict JSON has no such numbers, so they can't be written back
        return JSONResponse({"detail": _json_safe(jsonable_encoder(error.errors()))}, status_code=422)

    def current() -> OnnxGenerator:
        generator = source.generator
        if generator is None:
            raise HTTPException(503, detail=f"no model loaded: {source.last_error or 'file missing'}")
        return generator

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        expected = os.environ.get(settings.api_key_env)
        if not expected:
            return
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected.encode()):
            raise HTTPException(401, detail="missing or wrong X-API-Key")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if source.generator is None:
            return JSONResponse({"status": "not ready", "error": source.last_error}, status_code=503)
        return JSONResponse({"status": "ready", "version": source.version})

    @app.get("/v1/model", dependencies=[Depends(require_key)])
    def model_info() -> dict:
        generator = current()
        spec = generator.spec
        metadata = generator.metadata
        inputs = {"z": {"dtype": "float32", "shape": ["n", spec.latent_dim]}}
        shape = ["n", spec.channels, spec.resolution, spec.resolution]
        if spec.conditional:
            inputs["labels"] = {"dtype": "int64", "shape": ["n"], "range": [0, spec.num_classes - 1]}
        return {
            "name": metadata.get("ganops.model_name", _model_name(source.locator.uri)),
            "version": metadata.get("ganops.model_version", source.version),
            # the registry entry's evaluation (what register judged it by), else the one the file was exported with
            "metrics": _json_or_empty((source.registry or {}).get("evaluation"))
            or _json_or_empty(metadata.get("ganops.metrics")),
            "registry": {k: v for k, v in (source.registry or {}).items() if k != "evaluation"} or None,
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
        }

    @app.post("/v1/generate", dependencies=[Depends(require_key)],
              responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    def generate(request: GenerateRequest) -> Response:
        generator = current()  # held for the whole request: a model swap can't pull it away
        if request.n > settings.max_batch:
            what = f"z has {request.n} rows" if request.z is not None else f"n={request.n}"
            raise HTTPException(422, detail=f"{what}, over serve.max_batch={settings.max_batch}")
        z = generator.latents(request.n, request.seed) if request.z is None else request.z
        seed = request.seed if request.z is None else None
        try:
            floats, labels = generator.generate(z, request.labels)
        except ValueError as error:
            raise HTTPException(422, detail=str(error)) from None
        label_list = labels.tolist() if labels is not None else None
        if request.format == "floats":
            return Response(orjson.dumps({
                "shape": list(floats.shape), "dtype": "float32", "layout": "NCHW", "range": [-1, 1],
                "labels": label_list, "seed": seed, "images": np.ascontiguousarray(floats, dtype=np.float32),
            }, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
        images = to_uint8(floats)
        if request.format == "png":
            rows = max(1, round(request.n ** 0.5))
            return Response(grid_png(images, rows), media_type="image/png")
        return JSONResponse({
            "shape": list(images.shape), "dtype": "uint8", "layout": "NCHW", "labels": label_list,
            "seed": seed, "data": base64.b64encode(images.tobytes()).decode(),
        })

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
