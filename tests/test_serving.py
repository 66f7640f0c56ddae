"""The HTTP service, started as a user would (`ganops serve`) on loopback: endpoints, validation,
API key, hot swap under load, a property-based fuzz that must never see a 5xx, a bounded load test."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import copy_project, free_port, spawn, stop, tiny, wait_for_http, write_params
from ganops.pixels import to_uint8
from ganops.serving import OnnxGenerator
from ganops.stages.export import export
from ganops.stages.train import train


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_prepared, tiny_exported) -> dict[str, Path]:
    """Two exported generators: conditional (seed 0: conftest's shared tiny project) and another of the
    same shape (seed 1, trained here on the shared prepared data)."""
    root = copy_project(tiny_prepared, tmp_path_factory.mktemp("model_b"))
    params = tiny({"train": {"seed": 1}})
    train(params, root)
    export(params, root)
    return {"a": tiny_exported / "models" / "generator.onnx", "b": root / "models" / "generator.onnx"}


class Server:
    def __init__(self, folder: Path, model: Path, api_key: str | None = None, **serve) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        write_params(folder / "params.yaml", {"serve": {"reload_interval_s": 0.2, "max_batch": 16, **serve}})
        env = {k: v for k, v in os.environ.items() if k != "GANOPS_API_KEY"}
        if api_key:
            env["GANOPS_API_KEY"] = api_key
        ganops = str(Path(sys.executable).parent / "ganops")
        self.process = spawn([ganops, "serve", "--model", str(model), "--port", str(self.port)],
                             folder / f"serve-{self.port}.log", cwd=folder, env=env)
        wait_for_http(self.url + "/readyz", self.process, seconds=60)

    def stop(self) -> str:
        return stop(self.process)


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    model = folder / "generator.onnx"
    shutil.copy(models["a"], model)
    running = Server(folder, model)
    yield running
    output = running.stop()
    assert "Traceback" not in output, output


def post(server, body=None, **kwargs) -> httpx.Response:
    """``body`` as JSON the way Python writes it: NaN and Infinity as the bare tokens json.dumps emits
    (httpx's own json= refuses them), so the server's handling of them is tested too."""
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(server.url + "/v1/generate", content=json.dumps(body), headers=headers, timeout=30, **kwargs)


@pytest.mark.system
def test_health_ready_and_model_info(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    info = httpx.get(server.url + "/v1/model").json()
    assert info["input"]["z"]["shape"] == ["n", 8]
    assert info["input"]["labels"]["range"] == [0, 9]
    assert info["output"]["shape"] == ["n", 1, 8, 8] and info["output"]["dtype"] == "uint8"
    formats = info["output"]["formats"]
    assert set(formats) == {"png", "array", "floats"}
    assert formats["array"]["dtype"] == "uint8" and formats["floats"]["dtype"] == "float32"
    assert formats["floats"]["shape"] == ["n", 1, 8, 8] and formats["floats"]["range"] == [-1, 1]
    assert info["classes"] == [str(d) for d in range(10)] and info["max_batch"] == 16
    assert info["name"] == "generator" and len(info["version"]) == 12
    assert info["metrics"] == {} and info["registry"] is None  # exported before any evaluation: no numbers to show


@pytest.mark.system
def test_generate_png_grid(server):
    response = post(server, {"n": 9, "seed": 1})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (3 * 34 + 2, 3 * 34 + 2)  # 3x3 cells of 8px enlarged 4x, 2px borders


@pytest.mark.system
def test_generate_array_is_seeded_and_matches_the_library(server, models):
    body = {"n": 4, "seed": 11, "labels": [1, 2, 3, 4], "format": "array"}
    first, second = post(server, body).json(), post(server, body).json()
    assert first == second
    assert first["shape"] == [4, 1, 8, 8] and first["labels"] == [1, 2, 3, 4]
    images = np.frombuffer(base64.b64decode(first["data"]), dtype=np.uint8).reshape(first["shape"])
    expected, _ = OnnxGenerator(models["a"]).sample(4, 11, [1, 2, 3, 4])
    assert np.array_equal(images, expected)
    other = post(server, {**body, "seed": 12}).json()
    assert other["data"] != first["data"]


@pytest.mark.system
def test_truncation_is_the_librarys_and_redraws_only_what_lies_beyond_psi(server, models):
    body = {"n": 6, "seed": 11, "labels": 3, "format": "floats"}
    plain, truncated = post(server, body).json(), post(server, {**body, "truncation": 0.5}).json()
    library = OnnxGenerator(models["a"])
    z, untruncated = library.latents(6, 11, truncation=0.5), library.latents(6, 11)
    inside = np.abs(untruncated) <= 0.5
    assert np.abs(z).max() <= 0.5 and np.array_equal(z[inside], untruncated[inside])
    assert np.array_equal(np.asarray(truncated["images"], dtype=np.float32), library.run(z, np.full(6, 3)))
    assert truncated["images"] != plain["images"]
    # the CLI's and the library's sample() draw the same truncated latents
    images, _ = library.sample(6, 11, 3, truncation=0.5)
    assert np.array_equal(images, to_uint8(library.run(z, np.full(6, 3))))
    # psi = 10: nothing lies beyond it, nothing is redrawn
    assert post(server, {**body, "truncation": 10}).json()["images"] == plain["images"]


@pytest.mark.system
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"n": 0}, 422, "greater than or equal to 1"),
        ({"n": 17}, 422, "over serve.max_batch=16"),
        ({"n": "5"}, 422, "valid integer"),
        ({"n": 2.5}, 422, "valid integer"),
        ({"seed": -1}, 422, "greater than or equal to 0"),
        ({"seed": 2**64}, 422, "less than or equal to"),
        ({"seed": "abc"}, 422, "valid integer"),
        ({"truncation": 0.0}, 422, "greater than or equal to 0.05"),
        ({"truncation": 10.5}, 422, "less than or equal to 10"),
        ({"truncation": "0.5"}, 422, "valid number"),
        ({"truncation": True}, 422, "valid number"),
        ({"z": [[0.5] * 8], "truncation": 0.5}, 422, "with z, send them truncated"),
        ({"n": 2, "labels": [0, 10]}, 422, "label 10 is outside 0..9"),
        ({"n": 2, "labels": 99}, 422, "label 99 is outside 0..9"),
        ({"n": 3, "labels": [1, 2]}, 422, "got 2 labels for 3 images"),
        ({"n": 1, "format": "gif"}, 422, "'png', 'array' or 'floats'"),
        ({"n": 1, "colour": "red"}, 422, "Extra inputs are not permitted"),
        ([1, 2, 3], 422, "valid dictionary"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, body, status, message):
    response = post(server, body)
    assert response.status_code == status
    assert message in response.text


@pytest.mark.system
def test_malformed_bodies(server):
    url = server.url + "/v1/generate"
    assert httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert httpx.post(url, content=b"n=3", headers={"content-type": "text/plain"}).status_code == 422
    huge = b'{"n": 1, "pad": "' + b"x" * 1_100_000 + b'"}'
    response = httpx.post(url, content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over 1048576 bytes" in response.text  # serve.max_body_bytes default

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(1100):
            yield b"x" * 1000

    assert httpx.post(url, content=chunks(), headers={"content-type": "application/json"}).status_code == 413
    assert httpx.get(url).status_code == 405
    assert httpx.get(server.url + "/v1/nope").status_code == 404


@pytest.mark.system
def test_z_gives_the_seed_images_and_floats_are_the_model_output(server, models):
    library = OnnxGenerator(models["a"])
    z = library.latents(4, 11)
    by_seed = post(server, {"n": 4, "seed": 11, "labels": [1, 2, 3, 4], "format": "array"}).json()
    by_z = post(server, {"z": z.tolist(), "labels": [1, 2, 3, 4], "format": "array"}).json()
    assert by_z["data"] == by_seed["data"]  # byte-identical images
    assert by_z["shape"] == [4, 1, 8, 8] and by_z["labels"] == [1, 2, 3, 4] and by_z["seed"] is None
    assert by_seed["seed"] == 11
    # n may be sent too when it agrees; png works with z
    assert post(server, {"n": 4, "z": z.tolist(), "labels": [1, 2, 3, 4], "format": "array"}).json() == by_z
    png = post(server, {"z": z.tolist()})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"

    response = post(server, {"z": z.tolist(), "labels": [1, 2, 3, 4], "format": "floats"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    floats = response.json()
    assert {k: v for k, v in floats.items() if k != "images"} == {
        "shape": [4, 1, 8, 8], "dtype": "float32", "layout": "NCHW", "range": [-1, 1], "labels": [1, 2, 3, 4],
        "seed": None}
    expected = library.run(z, np.array([1, 2, 3, 4]))
    got = np.asarray(floats["images"], dtype=np.float64)
    assert got.shape == expected.shape and np.array_equal(got.astype(np.float32), expected)  # exact after rounding
    assert np.abs(got).max() <= 1.0
    # the numbers are written in float32's shortest form, not as float64 reprs of float32 values
    assert len(response.content) < len(json.dumps(expected.tolist()))
    # the seed path in floats: the same numbers, with its seed
    seeded = post(server, {"n": 4, "seed": 11, "labels": [1, 2, 3, 4], "format": "floats"}).json()
    assert seeded["images"] == floats["images"] and seeded["seed"] == 11


@pytest.mark.system
def test_labels_with_z(server, models):
    library = OnnxGenerator(models["a"])
    z = library.latents(3, 2)

    def floats(body: dict) -> dict:
        response = post(server, {"z": z.tolist(), "format": "floats", **body})
        assert response.status_code == 200, response.text
        return response.json()

    default = floats({})  # classes in turn, as with a seed
    assert default["labels"] == [0, 1, 2]
    assert np.array_equal(np.asarray(default["images"], dtype=np.float32), library.run(z, np.array([0, 1, 2])))
    one = floats({"labels": 7})
    assert one["labels"] == [7, 7, 7]
    assert np.array_equal(np.asarray(one["images"], dtype=np.float32), library.run(z, np.array([7, 7, 7])))
    assert floats({"labels": [5, 6, 7]})["labels"] == [5, 6, 7]
    images, labels = library.generate(z, 7)  # the library's own call agrees
    assert labels.tolist() == [7, 7, 7] and np.array_equal(images, library.run(z, np.array([7, 7, 7])))


ROW = [0.5] * 8  # the test generators' latent_dim is 8


@pytest.mark.system
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"z": [ROW, ROW], "n": 3}, "n=3 but z has 2 rows"),
        ({"z": [ROW], "seed": 1}, "seed and z are exclusive"),
        ({"z": [ROW], "seed": 0}, "seed and z are exclusive"),
        ({"z": [ROW, ROW[:7], ROW[:3]]}, "z[1] has 7 numbers; this generator takes rows of latent_dim=8"),
        ({"z": [ROW, ROW + [1.0]]}, "z[1] has 9 numbers"),
        ({"z": [ROW, [*ROW[:3], math.nan, *ROW[4:]]]}, "finite number"),
        ({"z": [[math.inf] + ROW[1:]]}, "finite number"),
        ({"z": [[-math.inf] + ROW[1:]]}, "finite number"),
        ({"z": [ROW, [1e39] + ROW[1:]]}, "z[1][0] = 1e+39 is outside float32's range"),
        ({"z": [["0.5"] + ROW[1:]]}, "valid number"),
        ({"z": [[True] + ROW[1:]]}, "valid number"),
        ({"z": [[None] + ROW[1:]]}, "valid number"),
        ({"z": []}, "at least 1 item"),
        ({"z": [ROW] * 17}, "z has 17 rows, over serve.max_batch=16"),
        ({"z": 5}, "valid list"),
        ({"z": ROW}, "valid list"),
        ({"z": [ROW, ROW], "labels": [1, 2, 3]}, "got 3 labels for 2 images"),
        ({"z": [ROW], "labels": 10}, "label 10 is outside 0..9"),
        ({"z": [ROW], "format": "floats", "labels": "1"}, "valid integer"),
    ],
)
def test_bad_z_gets_a_specific_422(server, body, message):
    response = post(server, body)
    assert response.status_code == 422, response.text
    assert message in response.text, response.text


@pytest.mark.system
def test_bad_z_leaves_the_server_serving(server):
    for body in ({"z": [[math.nan] * 8]}, {"z": [[0.0] * 3]}, {"z": [[1e39] * 8]}, {"z": [[0.0] * 8] * 17}):
        assert post(server, body).status_code == 422
    too_big = {"z": [[0.123456789] * 8] * 12_000, "format": "floats"}
    assert len(json.dumps(too_big)) > 1_048_576  # serve.max_body_bytes default
    response = post(server, too_big)
    assert response.status_code == 413 and "over 1048576 bytes" in response.text
    assert post(server, {"z": [[0.0] * 8] * 16, "format": "floats"}).status_code == 200
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
latent_numbers = st.floats(width=32) | st.floats() | st.integers(-(2**70), 2**70) | json_values  # NaN, inf, 1e300 too
latent_rows = st.lists(latent_numbers, min_size=7, max_size=9) | st.just([0.25] * 8) | json_values
request_bodies = st.fixed_dictionaries(
    {},
    optional={"n": json_values | st.integers(-3, 40), "seed": json_values,
              "labels": json_values | st.lists(st.integers(-2, 12), max_size=20),
              "z": st.lists(latent_rows, max_size=18) | json_values,
              "format": st.sampled_from(["png", "array", "floats", "jpeg", ""]) | json_values},
) | json_values


@pytest.mark.system
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=request_bodies)
def test_fuzz_never_a_server_error(server, body):
    response = post(server, body)
    assert response.status_code < 500, (body, response.text)
    assert response.status_code in (200, 413, 422)


@pytest.mark.system
def test_bounded_load_with_zero_errors(server):
    def call(i: int) -> int:
        return post(server, {"n": 4, "seed": i, "format": "array"}).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(call, range(400)))
    assert codes == [200] * 400
    assert time.monotonic() - started < 120


@pytest.mark.system
def test_api_key_in_constant_time(models, tmp_path):
    running = Server(tmp_path, models["a"], api_key="s3cret")
    try:
        assert httpx.get(running.url + "/healthz").json() == {"status": "ok"}  # probes need no key
        assert httpx.get(running.url + "/readyz").json()["status"] == "ready"
        for refused in (post(running, {"n": 1}), post(running, {"n": 1}, headers={"X-API-Key": "wrong"}),
                        post(running, {"n": 1}, headers={"X-API-Key": "s3cre"}),  # a prefix of the key
                        httpx.get(running.url + "/v1/model"), httpx.get(running.url + "/docs"),
                        httpx.get(running.url + "/openapi.json"),
                        httpx.get(running.url + "/v1/model", headers={"X-API-Key": "S3CRET"})):
            assert refused.status_code == 401 and refused.json() == {"detail": "missing or wrong X-API-Key"}
            assert "s3cret" not in refused.text and "X-Model-Version" not in refused.headers
        allowed = post(running, {"n": 1}, headers={"X-API-Key": "s3cret"})
        assert allowed.status_code == 200 and allowed.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(allowed.content)).size == (34 + 2, 34 + 2)  # the one image it asked for
        info = httpx.get(running.url + "/v1/model", headers={"X-API-Key": "s3cret"}).json()
        assert info["input"]["z"]["shape"] == ["n", 8]
    finally:
        running.stop()


OPEN_PATHS = {"/healthz", "/readyz"}  # the probes: all that answers without the key


@pytest.mark.stage
def test_with_a_key_every_path_but_the_probes_needs_it(models, monkeypatch):
    """Every route the app has, FastAPI's docs and schema included, and any route added later: refused
    without the key or with a wrong one (the API's own 401), answered with it."""
    monkeypatch.setenv("GANOPS_API_KEY", "s3cret")
    app, client = _in_process(models["a"])
    bodies = {"/v1/generate": {"n": 1}}  # a route that needs a body to answer 200 gets one here
    routes = {route.path: getattr(route, "methods", None) for route in app.routes}
    assert {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/v1/model", "/v1/generate"} <= set(routes)
    with client:
        for path, methods in routes.items():
            assert methods, f"{path} is not an HTTP route: check that it needs the key too"
            for method in methods:
                send = {"json": bodies[path]} if path in bodies else {}
                for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "s3cre"}):
                    answer = client.request(method, path, headers=headers, **send)
                    if path in OPEN_PATHS:
                        assert answer.status_code == 200, (method, path, answer.text)
                        continue
                    assert answer.status_code == 401, (method, path, headers, answer.status_code)
                    assert method == "HEAD" or answer.json() == {"detail": "missing or wrong X-API-Key"}
                answer = client.request(method, path, headers={"X-API-Key": "s3cret"}, **send)
                assert answer.status_code == 200, (method, path, answer.text)
        assert client.get("/v1/nope").status_code == 401  # a path that is no route: refused, not 404
        from starlette.websockets import WebSocketDisconnect

        with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/v1/stream"):
            pass  # a WebSocket route added later would be refused too: closed as a policy violation, unread
        assert closed.value.code == 1008 and closed.value.reason == "missing or wrong X-API-Key"


@pytest.mark.system
def test_exposed_only_on_loopback_unless_keyed(models, tmp_path, monkeypatch):
    from conftest import run_cli
    from ganops.serving.commands import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    write_params(tmp_path / "params.yaml")
    env_without_key = {k: v for k, v in os.environ.items() if k != "GANOPS_API_KEY"}
    monkeypatch.delenv("GANOPS_API_KEY", raising=False)
    refused = run_cli("serve", "--model", str(models["a"]), "--host", "0.0.0.0", "--port", str(free_port()),
                      cwd=tmp_path, check=False, timeout=120)
    assert refused.returncode == 2 and "refusing to serve on 0.0.0.0" in refused.stderr and "GANOPS_API_KEY" in refused.stderr
    port = free_port()
    public = spawn([str(Path(sys.executable).parent / "ganops"), "serve", "--model", str(models["a"]), "--host",
                    "0.0.0.0", "--port", str(port), "--allow-public-without-key"], tmp_path / "public.log",
                   cwd=tmp_path, env=env_without_key)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", public, seconds=60)
    finally:
        output = stop(public)
    assert "WITHOUT an API key" in output


@pytest.mark.system
def test_model_swap_drops_no_request(models, tmp_path):
    """Under load, a swap by rename drops no request. (That a request in flight keeps its model is proven
    without a race by test_a_model_swapped_in_the_middle_of_a_request_makes_none_of_its_images.)"""
    served = tmp_path / "generator.onnx"
    shutil.copy(models["a"], served)
    running = Server(tmp_path, served)
    try:
        before = httpx.get(running.url + "/v1/model").json()["version"]
        answers: list[tuple[int, str, str]] = []  # (status, X-Model-Version, images)
        enough = {"old": threading.Event(), "new": threading.Event()}
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                response = post(running, {"n": 8, "seed": 5, "format": "array"})
                answers.append((response.status_code, response.headers.get("X-Model-Version", ""),
                                response.json()["data"]))
                versions = [version for _, version, _ in answers]
                if versions.count(before) >= 20:
                    enough["old"].set()
                if len(versions) - versions.count(before) >= 20:
                    enough["new"].set()

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        assert enough["old"].wait(60)  # under load with the old model ...
        staging = tmp_path / ".generator.onnx.tmp"
        shutil.copy(models["b"], staging)
        os.replace(staging, served)  # ... the file is replaced as `dvc repro export` does: one rename
        assert enough["new"].wait(60)  # ... and the hammering goes on until the new one has answered too
        stop.set()
        for thread in threads:
            thread.join()
        after = httpx.get(running.url + "/v1/model").json()["version"]
        assert after != before and {status for status, _, _ in answers} == {200}
        # every response came wholly from the model its header names, never a mix of the two
        expected = {version: base64.b64encode(OnnxGenerator(models[name]).sample(8, 5)[0].tobytes()).decode()
                    for version, name in ((before, "a"), (after, "b"))}
        assert expected[before] != expected[after]
        assert all(images == expected[version] for _, version, images in answers)
        assert {version for _, version, _ in answers} == {before, after}

        served.write_bytes(b"a broken upload")  # a bad new file: keep serving the last good model
        _until(lambda: httpx.get(running.url + "/v1/model").json()["reload"]["error"])
        assert post(running, {"n": 1}).status_code == 200
        assert httpx.get(running.url + "/readyz").status_code == 200
    finally:
        output = running.stop()
    assert "keeping the current model" in output


@pytest.mark.stage
def test_a_model_swapped_in_the_middle_of_a_request_makes_none_of_its_images(models, tmp_path):
    """The model is swapped exactly between the moment a request takes its snapshot and the moment it
    generates (the service's hook runs there, in the request's worker thread): that request is answered
    wholly by the model it started with, images and version header alike, and the next one wholly by
    the new model. Each answer is compared with each model's own images for the same seed."""
    served = tmp_path / "generator.onnx"
    shutil.copy(models["a"], served)
    app, client = _in_process(served, reload_interval_s=3600)  # the test swaps, not the timer
    routes = app.state.routes
    body = {"n": 8, "seed": 5, "format": "array"}
    own = {name: base64.b64encode(OnnxGenerator(models[name]).sample(8, 5)[0].tobytes()).decode() for name in "ab"}
    assert own["a"] != own["b"]
    versions = []  # (the snapshot's, the one served after the swap)

    def swap_to_b(snapshot) -> None:
        if versions:
            return
        staging = tmp_path / ".incoming.onnx"
        shutil.copy(models["b"], staging)
        os.replace(staging, served)
        assert routes.source.refresh()  # b is served from here on
        versions.append((snapshot.version, routes.source.served.version))

    routes.before_generating = swap_to_b
    with client:
        during = client.post("/v1/generate", json=body)
        after = client.post("/v1/generate", json=body)
    ((old, new),) = versions
    assert old != new
    assert during.status_code == 200 and during.headers["X-Model-Version"] == old
    assert during.json()["data"] == own["a"]  # not b's images, nor a mix of the two
    assert after.status_code == 200 and after.headers["X-Model-Version"] == new
    assert after.json()["data"] == own["b"]


def _with_spec(source: Path, target: Path, spec: str) -> None:
    """A copy of an exported model whose generator spec is ``spec``: e.g. one a newer ganops wrote."""
    import onnx

    from ganops.serving.runtime import SPEC_KEY

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == SPEC_KEY:
            prop.value = spec
    staging = target.with_name(".incoming.onnx")
    onnx.save(model, str(staging))
    os.replace(staging, target)


def _until(condition, seconds: float = 30.0):
    """Poll ``condition`` until it returns something truthy (the server reloads on its own timer)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


@pytest.mark.system
def test_reload_survives_any_bad_model_and_says_it_is_stale(models, tmp_path):
    """A model whose spec does not validate (pydantic, not a ganops error), then a vanished file: the
    watcher logs each, keeps serving the last good model, says it is stale, and still picks up the next one."""
    served = tmp_path / "generator.onnx"
    shutil.copy(models["a"], served)
    running = Server(tmp_path, served)
    try:
        first = httpx.get(running.url + "/readyz").json()
        assert first == {"status": "ready", "version": first["version"], "stale": False}
        newer = json.loads(OnnxGenerator(models["a"]).metadata["ganops.generator_spec"])
        newer["latent_dim"] = "eight"  # a spec this ganops can't read
        _with_spec(models["a"], served, json.dumps(newer))
        stale = _until(lambda: (r := httpx.get(running.url + "/readyz").json())["stale"] and r)
        assert stale["status"] == "stale" and stale["version"] == first["version"]  # still the last good one
        info = httpx.get(running.url + "/v1/model").json()
        assert info["version"] == first["version"] and "ValidationError" in info["reload"]["error"]
        assert str(tmp_path) not in httpx.get(running.url + "/readyz").text  # no paths on the unkeyed probe
        response = post(running, {"n": 2, "format": "array"})
        assert response.status_code == 200 and response.headers["X-Model-Version"] == first["version"]
        served.unlink()
        _until(lambda: "not found" in (httpx.get(running.url + "/v1/model").json()["reload"]["error"] or ""))
        assert post(running, {"n": 1}).status_code == 200
        staging = tmp_path / ".b.onnx"
        shutil.copy(models["b"], staging)
        os.replace(staging, served)  # a good model again: the watcher is alive and loads it
        ready = _until(lambda: (r := httpx.get(running.url + "/readyz").json())["version"] != first["version"] and r)
        assert ready["status"] == "ready" and ready["stale"] is False
        assert post(running, {"n": 1}).headers["X-Model-Version"] == ready["version"]
    finally:
        output = running.stop()
    assert "keeping the current model" in output and "ValidationError" in output and "Traceback" not in output


@pytest.mark.system
def test_a_stale_replica_can_ask_to_be_drained(models, tmp_path):
    served = tmp_path / "generator.onnx"
    shutil.copy(models["a"], served)
    running = Server(tmp_path, served, ready_when_stale=False)
    try:
        served.write_bytes(b"a broken upload")
        _until(lambda: httpx.get(running.url + "/readyz").status_code == 503)
        assert httpx.get(running.url + "/readyz").json()["status"] == "stale"
        assert post(running, {"n": 1}).status_code == 200  # it still answers whoever reaches it
    finally:
        running.stop()


@pytest.mark.stage
def test_a_nan_generator_is_never_served(models, tmp_path):
    """NaN weights give NaN images, which uint8 conversion would turn into plausible black squares."""
    import onnx
    from onnx import numpy_helper

    from ganops.serving.runtime import ModelError

    model = onnx.load(str(models["a"]))
    weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    poisoned = numpy_helper.to_array(weights).copy()
    poisoned.flat[0] = np.nan
    weights.CopyFrom(numpy_helper.from_array(poisoned, weights.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    with pytest.raises(ModelError, match="not finite"):
        OnnxGenerator(tmp_path / "nan.onnx")


def _in_process(model: Path, **serve):
    """The real app (lifespan included) under Starlette's test client, with these serve settings."""
    from fastapi.testclient import TestClient

    from ganops.config import ServeParams
    from ganops.serving.app import ModelSource, create_app
    from ganops.serving.locate import FileLocator

    app = create_app(ModelSource(FileLocator(model), None), ServeParams(**serve))
    return app, TestClient(app)


@pytest.mark.stage
def test_generations_beyond_the_bounds_get_503_with_retry_after(models):
    """The limiter's slots are held by the test itself, so what is full is known, not raced for."""
    app, client = _in_process(models["a"], max_concurrent=1, max_queue=0, retry_after_s=3)
    with client:
        with app.state.limiter.slot(wait_s=1.0):  # the one generation slot, taken
            busy = client.post("/v1/generate", json={"n": 1})
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "3"
            assert "1 generations running and 0 waiting" in busy.json()["detail"]
        assert client.post("/v1/generate", json={"n": 1}).status_code == 200  # released: served again
        assert app.state.limiter.rejected == 1
    app, client = _in_process(models["a"], max_concurrent=1, max_queue=1, request_timeout_s=0.2)
    with client, app.state.limiter.slot(wait_s=1.0):
        started = time.monotonic()
        waited = client.post("/v1/generate", json={"n": 1})  # queued, then timed out waiting for the slot
        assert waited.status_code == 503 and "no generation slot free within 0.2 s" in waited.json()["detail"]
        assert 0.2 <= time.monotonic() - started < 10


@pytest.mark.stage
def test_health_and_refusals_answer_while_every_worker_thread_waits(models):
    """Admission runs on the event loop: with the one worker thread held by a request waiting for a
    slot, /readyz still answers and a request beyond the bounds is refused, both before that wait ends
    (were they to need a worker thread, they would answer only after its 30 s timeout)."""
    import anyio.to_thread

    app, client = _in_process(models["a"], max_concurrent=1, max_queue=1, request_timeout_s=30)
    with client:
        client.portal.call(lambda: setattr(anyio.to_thread.current_default_thread_limiter(), "total_tokens", 1))
        limiter = app.state.limiter
        with limiter.slot(wait_s=1.0):  # the one generation slot, taken
            waiting = ThreadPoolExecutor(max_workers=1).submit(client.post, "/v1/generate", json={"n": 1})
            _until(lambda: limiter.admitted == 2)  # the test's slot and the request waiting in the one thread
            assert client.get("/readyz").status_code == 200
            refused = client.post("/v1/generate", json={"n": 1})
            assert refused.status_code == 503 and "1 generations running and 1 waiting" in refused.json()["detail"]
            assert not waiting.done()  # both answered while the waiting request still waits
        assert waiting.result(timeout=60).status_code == 200  # the slot freed: it is served


@pytest.mark.stage
def test_a_response_over_its_byte_bound_is_refused_before_generating(models):
    from ganops.serving.app import response_bound

    app, client = _in_process(models["a"], max_batch=4096, max_response_bytes=100_000)
    with client:
        response = client.post("/v1/generate", json={"n": 200, "format": "floats"})
        assert response.status_code == 422
        assert "take up to 205824 bytes, over serve.max_response_bytes=100000" in response.json()["detail"]
        for fmt in ("floats", "array", "png"):  # the bound holds what each format really takes
            ok = client.post("/v1/generate", json={"n": 60, "format": fmt, "labels": 3})
            assert ok.status_code == 200 and len(ok.content) <= response_bound(fmt, (60, 1, 8, 8))


@pytest.mark.stage
def test_a_generation_past_its_time_is_stopped(models):
    from ganops.serving.runtime import GenerationTimeout

    generator = OnnxGenerator(models["a"])
    z = generator.latents(50_000, 0)
    with pytest.raises(GenerationTimeout, match="generation of 50000 images ran past 0.001 s"):
        generator.generate(z, 1, timeout_s=0.001)
    assert generator.generate(z[:4], 1, timeout_s=30)[0].shape == (4, 1, 8, 8)  # the session still works


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.system
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
def test_memory_stays_bounded_under_a_burst_of_large_requests(models, tmp_path):
    """48 clients at once asking for the largest float responses: at most max_concurrent generate, the
    rest wait in the queue or get 503, and the server's peak resident memory grows by a bounded amount."""
    running = Server(tmp_path, models["a"], max_batch=4096, max_concurrent=1, max_queue=2)
    try:
        post(running, {"n": 4096, "format": "floats"})  # warm: the first large response's buffers
        before = _peak_rss_bytes(running.process.pid)
        barrier = threading.Barrier(48)

        def call(i: int) -> httpx.Response:
            barrier.wait()
            return post(running, {"n": 4096, "seed": i, "format": "floats"})

        with ThreadPoolExecutor(max_workers=48) as pool:
            responses = list(pool.map(call, range(48)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and codes.count(200) >= 3
        assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 503)
        grown = _peak_rss_bytes(running.process.pid) - before
        each = len(responses[codes.index(200)].content)
        assert grown < 12 * each, (grown, each)  # 3 admitted at a time, not 48
        load = httpx.get(running.url + "/v1/model").json()["load"]
        assert load["peak_running"] == 1 and load["rejected"] == codes.count(503) > 0
        assert httpx.get(running.url + "/readyz").json()["status"] == "ready"
    finally:
        running.stop()


def test_models_uris_parse_in_one_place():
    from ganops.serving.app import _model_name
    from ganops.serving.locate import RegisteredModelRef, parse_models_uri
    from ganops.serving.runtime import ModelError

    assert parse_models_uri("models:/ganops-generator@champion") == RegisteredModelRef("ganops-generator", alias="champion")
    assert parse_models_uri("models:/ganops-generator/3") == RegisteredModelRef("ganops-generator", version="3")
    assert parse_models_uri("runs:/abc/generator") is None and parse_models_uri("models/generator.onnx") is None
    for bad in ("models:/ganops-generator", "models:/3", "models:/name/"):
        with pytest.raises(ModelError, match="expected models:/<name>@<alias> or models:/<name>/<version>"):
            parse_models_uri(bad)
    assert _model_name("models:/ganops-generator/3") == "ganops-generator" == _model_name("models:/ganops-generator@c")
    assert _model_name("/srv/models/generator.onnx") == "generator"


@pytest.mark.system
def test_serve_opens_the_model_once_and_refuses_a_missing_one(models, tmp_path, monkeypatch):
    """`ganops serve` loads the model before the server starts (a clear error, not a failed startup)
    and the service then uses that same load: one onnxruntime session, not two."""
    import uvicorn
    from fastapi.testclient import TestClient

    from conftest import run_cli
    from ganops.serving import commands, runtime

    sessions, answers = [], []
    made = runtime.make_session
    monkeypatch.setattr(runtime, "make_session", lambda *args, **kwargs: sessions.append(args[0]) or made(*args, **kwargs))

    def run_the_app(app, **_):  # the real app, lifespan included, in process
        with TestClient(app) as client:
            answers.append(client.get("/readyz").json())

    monkeypatch.setattr(uvicorn, "run", run_the_app)
    commands.serve_http(str(models["a"]), "127.0.0.1", free_port(), None)
    assert answers and answers[0]["status"] == "ready"
    assert sessions == [models["a"]]

    missing = tmp_path / "none.onnx"
    write_params(tmp_path / "params.yaml")
    refused = run_cli("serve", "--model", str(missing), "--port", str(free_port()), cwd=tmp_path, check=False,
                      timeout=120)
    assert refused.returncode == 2 and f"model file not found: {missing}" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
