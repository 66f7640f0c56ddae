"""Serving's decisions at their boundaries, in process (unit tier: no stage, no subprocess, no server).

The admission count under cancellation (a request cancelled while it waits for a slot), the reload
backoff driven to its cap on an injected clock, and the 503's Retry-After on the time-out paths. The
app is the real one (``create_app``) over a real onnxruntime session, called through httpx's ASGI
transport; the model is a hand-built ONNX graph carrying a ganops generator spec, so nothing is trained.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from ganops.config import ServeParams
from ganops.serving.app import ModelSource, create_app
from ganops.serving.locate import FileLocator

LATENT, CLASSES, RESOLUTION = 4, 10, 8
SLOW_ABOVE = 100.0  # a latent value above this makes the graph spin (SLOW_ABOVE, ∞) -> 1e6 loop trips per unit
SLOW_Z = [[SLOW_ABOVE + 10.0] + [0.0] * (LATENT - 1)]  # 1e7 trips: many seconds, unless the run is stopped
ONE = {"n": 1, "format": "array"}


def write_tiny_generator(path: Path) -> Path:
    """An ONNX generator of LATENT -> (1, RESOLUTION, RESOLUTION) images in [-1, 1] with the ganops spec in
    its metadata: tanh(z W + E[labels]). A Loop whose trip count grows with the largest latent value
    (zero for the seeded probe the loader runs) makes one request as slow as the test wants, so a time-out
    during generation is onnxruntime's own termination, not a mock."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ganops.models.spec import GeneratorSpec
    from ganops.serving.runtime import SPEC_KEY

    rng = np.random.default_rng(0)
    pixels = RESOLUTION * RESOLUTION

    def constant(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    spin = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [constant("one", np.float32(1.0))],
    )
    node = helper.make_node
    nodes = [
        node("ReduceMax", ["z"], ["z_max"], keepdims=0), node("Sub", ["z_max", "slow_above"], ["excess"]),
        node("Relu", ["excess"], ["over"]), node("Mul", ["over", "trips_per_unit"], ["trips_float"]),
        node("Cast", ["trips_float"], ["trips"], to=TensorProto.INT64),
        node("Loop", ["trips", "true", "zero"], ["spun"], body=spin), node("Mul", ["spun", "zero"], ["nothing"]),
        node("MatMul", ["z", "w"], ["zw"]), node("Gather", ["embedding", "labels"], ["by_class"]),
        node("Add", ["zw", "by_class"], ["sum"]), node("Tanh", ["sum"], ["tanh"]),
        node("Add", ["tanh", "nothing"], ["flat"]), node("Reshape", ["flat", "shape"], ["images"]),
    ]
    initializers = [
        constant("w", rng.standard_normal((LATENT, pixels)).astype(np.float32)),
        constant("embedding", rng.standard_normal((CLASSES, pixels)).astype(np.float32)),
        constant("shape", np.array([-1, 1, RESOLUTION, RESOLUTION], np.int64)),
        constant("slow_above", np.float32(SLOW_ABOVE)), constant("trips_per_unit", np.float32(1e6)),
        constant("true", np.bool_(True)), constant("zero", np.float32(0.0)),
    ]
    graph = helper.make_graph(
        nodes, "tiny_generator",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", LATENT]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 1, RESOLUTION, RESOLUTION])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    spec = GeneratorSpec(resolution=RESOLUTION, channels=1, num_classes=CLASSES, latent_dim=LATENT, g_channels=1,
                         class_names=[str(c) for c in range(CLASSES)])
    model.metadata_props.add(key=SPEC_KEY, value=spec.model_dump_json())
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_tiny_generator(tmp_path_factory.mktemp("serving_decisions") / "generator.onnx")


class Threads:
    """Counts the request threads inside the service's worker-thread part (``generated_response``: wait
    for a slot, generate, encode), and records how long each was let wait for its slot and the time
    limit each generation was given."""

    def __init__(self, routes) -> None:
        self.inside = self.entered = 0
        self.slot_waits: list[float] = []
        self.generation_limits: list[float | None] = []
        self._lock = threading.Lock()
        in_request = threading.local()
        original = routes.generated_response

        def tracked(*args):
            with self._lock:
                self.inside += 1
                self.entered += 1
            in_request.active = True
            try:
                return original(*args)
            finally:
                in_request.active = False
                with self._lock:
                    self.inside -= 1

        routes.generated_response = tracked  # the handler calls self.generated_response: this one from here on
        limiter = routes.limiter
        generation = limiter.generation

        def waited(wait_s, *args):
            if getattr(in_request, "active", False):  # a request's wait, not a slot the test takes itself
                self.slot_waits.append(wait_s)
            return generation(wait_s, *args)

        limiter.generation = waited
        generator = routes.source.served.generator
        generate = generator.generate

        def limited(z, labels=None, timeout_s=None):
            self.generation_limits.append(timeout_s)
            return generate(z, labels, timeout_s=timeout_s)

        generator.generate = limited


def service(model: Path, **serve):
    """The real app for ``model`` with these serve settings (its lifespan, the reload watcher, is not run:
    the tests that reload drive ``ModelSource`` themselves), its routes and a tracker of its threads."""
    app = create_app(ModelSource(FileLocator(model), None), ServeParams(**serve))
    routes = app.state.routes
    return app, routes, Threads(routes)


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service", timeout=60)


async def until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.005)


def refused_for_load(response: httpx.Response, retry_after: str, detail: str) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["Retry-After"] == retry_after
    assert detail in response.json()["detail"], response.json()


# --- the admission count under cancellation ------------------------------------------------------------


def test_a_waiter_cancelled_gives_its_place_back_exactly_one_more_is_admitted_and_the_next_refused(model_file):
    """max_concurrent 1 and max_queue 1, both full (the slot held by the test, one request waiting in its
    thread): the waiting request's task is cancelled (as a client that gives up, under a server that
    cancels on disconnect). Its place comes back long before its 30 s time-out, the load is what it was
    before it came, and then exactly one more request is admitted and the next refused with 503."""
    app, routes, _ = service(model_file, max_concurrent=1, max_queue=1, request_timeout_s=30, retry_after_s=7)
    limiter = routes.limiter

    async def scenario() -> None:
        async with client(app) as http:
            with limiter.slot(wait_s=0):  # the one generation slot: 1 running, 0 waiting
                before = (await http.get("/v1/model")).json()["load"]
                assert (before["running"], before["waiting"]) == (1, 0)
                waiter = asyncio.create_task(http.post("/v1/generate", json=ONE))
                await until(lambda: limiter.admitted == 2)  # exactly full: 1 running, 1 waiting
                refused_for_load(await http.post("/v1/generate", json=ONE), "7", "1 generations running and 1 waiting")

                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
                await until(lambda: limiter.admitted == 1, seconds=5)  # its place is back, not after its 30 s
                load = (await http.get("/v1/model")).json()["load"]
                assert (load["running"], load["waiting"]) == (before["running"], before["waiting"])

                admitted = asyncio.create_task(http.post("/v1/generate", json=ONE))
                await until(lambda: limiter.admitted == 2)  # exactly one more: admitted, waiting for the slot
                refused_for_load(await http.post("/v1/generate", json=ONE), "7", "1 generations running and 1 waiting")
                assert not admitted.done()
            answer = await asyncio.wait_for(admitted, 30)  # the slot released: the admitted one is served
            assert answer.status_code == 200 and answer.json()["shape"] == [1, 1, RESOLUTION, RESOLUTION]
        await until(lambda: limiter.admitted == 0 and limiter.running == 0)

    asyncio.run(scenario())


def _cancelled(mode: str):
    """A request task and the function that cancels it: natively (``Task.cancel``, what asyncio servers
    and clients do) or through an anyio cancel scope (what Starlette's task groups do)."""
    scope = anyio.CancelScope()

    async def call(http: httpx.AsyncClient):
        with scope:
            return await http.post("/v1/generate", json=ONE)
        return None

    def start(http: httpx.AsyncClient):
        task = asyncio.create_task(call(http))
        return task, (task.cancel if mode == "native" else scope.cancel)

    return start


@pytest.mark.parametrize("mode", ["anyio", "native"])
def test_a_cancelled_waiter_is_counted_as_long_as_its_thread_holds_a_place(model_file, mode):
    """The bound on threads: whatever cancels a waiting request, the limiter counts every thread that waits
    for a slot until that thread is gone. Requests are sent and cancelled while they wait, three times,
    with the one slot held: at no moment do more threads wait than max_queue allows, and once the slot is
    free every thread ends and the count returns to zero."""
    app, routes, threads = service(model_file, max_concurrent=1, max_queue=1, request_timeout_s=30)
    limiter = routes.limiter

    async def scenario() -> None:
        tasks = []
        async with client(app) as http:
            with limiter.slot(wait_s=0):  # held by the test: counted, running, in no request thread
                for _ in range(3):
                    entered = threads.entered
                    task, cancel = _cancelled(mode)(http)
                    tasks.append(task)
                    await until(lambda task=task, entered=entered: task.done() or threads.entered > entered)
                    if task.done():  # refused at admission: the place is still taken
                        refused_for_load(task.result(), "1", "1 generations running and 1 waiting")
                        continue
                    cancel()
                    await asyncio.wait([task], timeout=0.2)  # the cancellation delivered, as far as it goes
                    assert threads.inside <= limiter.max_queue, "more threads wait for the slot than max_queue"
                    assert limiter.admitted - 1 >= threads.inside, "a thread waits for a slot the limiter doesn't count"
            await until(lambda: threads.inside == 0 and limiter.admitted == 0 and limiter.running == 0)
            await asyncio.wait(tasks, timeout=30)

    asyncio.run(scenario())


def session_runs(routes) -> list[int]:
    """Counts the onnxruntime session's runs of the served model: one per generation, however it is reached."""
    runs: list[int] = []
    session = routes.source.served.generator.session
    run = session.run

    def counted(*args, **kwargs):
        runs.append(1)
        return run(*args, **kwargs)

    session.run = counted
    return runs


@pytest.mark.parametrize("mode", ["anyio", "native"])
def test_a_cancelled_waiter_stops_waiting_at_once_and_never_generates(model_file, mode):
    """A request cancelled while its thread waits for the slot the test holds: the thread stops waiting and
    ends while the slot is still held (its place back long before its 30 s time-out), and once the slot is
    free no generation runs for it; the next request is generated exactly once."""
    app, routes, threads = service(model_file, max_concurrent=1, max_queue=1, request_timeout_s=30)
    limiter, runs = routes.limiter, session_runs(routes)

    async def scenario() -> None:
        async with client(app) as http:
            with limiter.slot(wait_s=0):
                task, cancel = _cancelled(mode)(http)
                await until(lambda: len(threads.slot_waits) == 1)  # its thread is at the slot, waiting
                cancel()
                await asyncio.wait([task], timeout=5)
                assert task.done(), "the cancelled request still waits for its thread"
                assert threads.inside == 0 and limiter.admitted == 1  # gone, the slot still held: the test's alone
            await asyncio.sleep(0.2)  # the slot free: a thread still waiting would take it now
            assert runs == [] and threads.generation_limits == [], "a generation ran for the cancelled request"
            assert (await http.post("/v1/generate", json=ONE)).status_code == 200
            assert len(runs) == 1 and limiter.admitted == 0 and limiter.running == 0

    asyncio.run(scenario())


# --- Retry-After on the time-out paths ------------------------------------------------------------------


def test_a_request_that_times_out_waiting_for_a_slot_gets_503_with_retry_after(model_file):
    """The slot held past request_timeout_s: the queued request is answered 503 with Retry-After equal to
    serve.retry_after_s (not the default), and its place in the queue is given back."""
    app, routes, threads = service(model_file, max_concurrent=1, max_queue=1, request_timeout_s=0.3, retry_after_s=7)
    limiter = routes.limiter

    async def scenario() -> None:
        async with client(app) as http:
            with limiter.slot(wait_s=0):
                started = time.monotonic()
                response = await asyncio.wait_for(http.post("/v1/generate", json=ONE), 30)
                waited = time.monotonic() - started
                refused_for_load(response, "7", "no generation slot free within 0.3 s")
                assert waited >= 0.3
                assert limiter.admitted == 1 and threads.generation_limits == []  # back to the test's slot alone
            assert (await http.post("/v1/generate", json=ONE)).status_code == 200

    asyncio.run(scenario())


def test_a_generation_past_the_request_timeout_gets_503_with_retry_after(model_file):
    """A slot free at once, and a generation that would run for many seconds: onnxruntime's run is
    stopped at request_timeout_s and the answer is 503 with Retry-After equal to serve.retry_after_s."""
    app, routes, threads = service(model_file, request_timeout_s=0.5, retry_after_s=7)

    async def scenario() -> None:
        async with client(app) as http:
            started = time.monotonic()
            response = await asyncio.wait_for(http.post("/v1/generate", json={"z": SLOW_Z, "format": "array"}), 60)
            elapsed = time.monotonic() - started
            refused_for_load(response, "7", "generation of 1 images ran past")
            assert elapsed < 5.0, elapsed  # stopped at its time-out, not run to its end
            assert routes.limiter.admitted == 0 and routes.limiter.running == 0
            assert (await http.post("/v1/generate", json=ONE)).status_code == 200

    asyncio.run(scenario())


def test_one_request_timeout_covers_the_time_before_the_wait_the_wait_and_the_generation(model_file):
    """request_timeout_s is one budget for the whole request: a request whose thread took 0.3 s before
    waiting (the test's hook, where latents are drawn) may wait at most the 29.7 s left of its 30, and one
    that then waited 0.5 s for the slot gives onnxruntime at most the 29.2 s left, never a fresh 30 s."""
    app, routes, threads = service(model_file, max_concurrent=1, max_queue=1, request_timeout_s=30)
    limiter = routes.limiter
    routes.before_generating = lambda served: time.sleep(0.3)

    async def scenario() -> None:
        async with client(app) as http:
            with limiter.slot(wait_s=0):
                request = asyncio.create_task(http.post("/v1/generate", json=ONE))
                await until(lambda: len(threads.slot_waits) == 1)  # waiting for the slot the test holds
                await asyncio.sleep(0.5)
            assert (await asyncio.wait_for(request, 30)).status_code == 200
        (wait,), (limit,) = threads.slot_waits, threads.generation_limits
        assert 0 < wait <= 29.7, wait
        assert limit is not None and 0 < limit <= 29.2, limit

    asyncio.run(scenario())


# --- the reload backoff ---------------------------------------------------------------------------------


class CountingLocator(FileLocator):
    """The file locator, counting how often the model is fetched: each fetch is one load attempt."""

    fetches = 0

    def fetch(self):
        self.fetches += 1
        return super().fetch()


@pytest.mark.parametrize(("base", "cap", "waits"), [
    (2.0, 32.0, [2, 4, 8, 16, 32, 32, 32]),  # a doubling lands exactly on the cap, and stays there
    (2.0, 20.0, [2, 4, 8, 16, 20, 20, 20]),  # the doubling would pass the cap: the cap
    (2.0, 60.0, [2, 4, 8, 16, 32, 60, 60]),  # serve's defaults (reload_interval_s, reload_retry_max_s)
])
def test_a_model_that_keeps_failing_is_retried_with_the_wait_doubling_up_to_the_cap(model_file, tmp_path, base, cap,
                                                                                    waits):
    """A new model file that never loads: each failed attempt sets the next one ``base`` doubling per
    failure, never beyond the cap. On an injected clock: not tried just before its time, tried exactly at
    it; the last good model serves all along and /v1/model's retry_in_s is the wait."""
    served = tmp_path / "generator.onnx"
    shutil.copy(model_file, served)
    now = [0.0]
    locator = CountingLocator(served)
    source = ModelSource(locator, None, retry_base_s=base, retry_max_s=cap, clock=lambda: now[0])
    good = source.served.version
    served.write_bytes(b"a broken upload")  # a new file at the path: what the locator points at changed
    seen = []
    for _ in waits:
        attempts = locator.fetches
        assert source.refresh() is False  # tried, failed
        assert locator.fetches == attempts + 1
        seen.append(source.retry_at - now[0])
        assert source.status()["retry_in_s"] == seen[-1] and source.stale
        now[0] = source.retry_at - 0.001
        assert source.refresh() is False and locator.fetches == attempts + 1  # still backing off: not tried
        now[0] = source.retry_at  # the wait is over exactly now: the next refresh tries
    assert seen == waits
    assert source.failures == len(waits) and source.served.version == good and source.last_error


def test_a_new_file_during_the_backoff_is_tried_at_once_and_a_good_one_ends_it(model_file, tmp_path):
    """The backoff belongs to the file that failed: another file at the path is tried at the next check
    (a broken one starts again from the base wait), and a good one is served, the backoff cleared."""
    served = tmp_path / "generator.onnx"
    shutil.copy(model_file, served)
    now = [0.0]
    locator = CountingLocator(served)
    source = ModelSource(locator, None, retry_base_s=2.0, retry_max_s=8.0, clock=lambda: now[0])
    good = source.served.version
    served.write_bytes(b"a broken upload")
    for _ in range(4):  # driven to the cap
        assert source.refresh() is False
        now[0] = source.retry_at
    assert source.retry_at - now[0] == 0 and source.failures == 4
    now[0] -= 1.0  # backing off: 1 s before the next try of this file
    assert source.refresh() is False and locator.fetches == 1 + 4

    served.write_bytes(b"another broken upload")  # a different file: tried at once, from the base wait
    assert source.refresh() is False and locator.fetches == 1 + 5
    assert source.failures == 1 and source.retry_at - now[0] == 2.0

    staging = tmp_path / ".incoming.onnx"
    shutil.copy(model_file, staging)
    staging.replace(served)  # a good model, still during that wait: tried at once, served
    assert source.refresh() is True and locator.fetches == 1 + 6
    assert source.served.version == good and not source.stale
    assert source.status() == {"stale": False, "error": None, "failures": 0, "retry_in_s": None}


def test_serve_hands_its_reload_settings_to_the_backoff(model_file, monkeypatch):
    """`ganops serve` builds the model source with serve.reload_interval_s as the first wait and
    serve.reload_retry_max_s as the cap."""
    import uvicorn

    from ganops.serving import commands

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    commands.serve_http(str(model_file), "127.0.0.1", 8000, ServeParams(reload_interval_s=3.0, reload_retry_max_s=12.0))
    (app,) = apps
    source = app.state.routes.source
    assert (source.retry_base_s, source.retry_max_s) == (3.0, 12.0)


# --- the reload: its defaults, what it serves, what it reports and logs ---------------------------------


class UnreadableLocator(FileLocator):
    """The file locator, but its stamp can be made to fail (a registry that doesn't answer)."""

    unreadable = False

    def stamp(self):
        if self.unreadable:
            raise OSError("the registry did not answer")
        return super().stamp()


class RegistryEntryLocator(CountingLocator):
    """A locator that, like the registry's, names the version it fetched and describes its entry."""

    details = {"name": "tiny", "version": "7", "aliases": ["champion"]}

    def fetch(self):
        path, _ = super().fetch()
        return path, "7"


def failure_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ganops.serving.app" and r.levelname == "ERROR"]


def test_model_source_defaults_to_a_2_s_first_wait_doubling_up_to_60_s(model_file, tmp_path):
    """Built without retry settings: 2 s after the first failure, doubling, 60 s at most (as serve's defaults)."""
    served = tmp_path / "generator.onnx"
    shutil.copy(model_file, served)
    now = [0.0]
    source = ModelSource(FileLocator(served), None, clock=lambda: now[0])
    served.write_bytes(b"a broken upload")
    waits = []
    for _ in range(7):
        assert source.refresh() is False
        waits.append(source.retry_at - now[0])
        now[0] = source.retry_at
    assert waits == [2, 4, 8, 16, 32, 60, 60]


def test_a_model_missing_from_the_start_reports_no_failure_and_no_retry(tmp_path):
    """Nothing at the path when the source is built: not a failed load (none was tried), so the status says
    the file is missing with zero failures and no retry pending."""
    missing = tmp_path / "generator.onnx"
    source = ModelSource(FileLocator(missing), None, clock=lambda: 0.0)
    assert source.served is None and source.failures == 0
    assert source.status() == {"stale": False, "error": f"model file not found: {missing}", "failures": 0,
                               "retry_in_s": None}


def test_a_model_file_is_served_under_the_first_12_hex_digits_of_its_sha256_and_not_reloaded_unchanged(
        model_file, tmp_path, caplog):
    """A plain file: its version is its content's sha256, 12 hex digits; the model is loaded with the thread
    count given, logged once as served, and a refresh with nothing changed neither loads nor logs it again."""
    import hashlib

    from ganops.ort_session import usable_cores

    served = tmp_path / "generator.onnx"
    shutil.copy(model_file, served)
    threads = usable_cores() + 1  # not what onnxruntime would get without it
    locator = CountingLocator(served)
    with caplog.at_level("INFO", logger="ganops.serving.app"):
        source = ModelSource(locator, threads)
        assert source.refresh() is False and locator.fetches == 1
    version = hashlib.sha256(model_file.read_bytes()).hexdigest()[:12]
    assert source.served.version == version and source.served.registry is None
    assert source.generator.session.get_session_options().intra_op_num_threads == threads
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "ganops.serving.app"]
    assert logged.startswith(f"serving {served} (version {version}, providers [")
    assert "CPUExecutionProvider" in logged


def test_a_registry_model_is_served_under_the_registry_version_with_its_entry(model_file):
    """A locator that names the version (the registry's): that version, not the file's hash, and its entry."""
    source = ModelSource(RegistryEntryLocator(model_file), None)
    assert source.served.version == "7"
    assert source.served.registry == {"name": "tiny", "version": "7", "aliases": ["champion"]}


def test_a_model_file_gone_and_back_unchanged_is_stale_while_gone_and_current_again_after(model_file, tmp_path):
    """The served file moved away: the model serves on, stale, the error naming the path; moved back (the same
    inode, size and time: the same model), it is current again without a reload."""
    served = tmp_path / "generator.onnx"
    aside = tmp_path / "aside.onnx"
    shutil.copy(model_file, served)
    locator = CountingLocator(served)
    source = ModelSource(locator, None, clock=lambda: 0.0)
    served.rename(aside)
    assert source.refresh() is False
    assert source.stale and source.generator is not None
    assert source.status() == {"stale": True, "error": f"model file not found: {served}", "failures": 0,
                               "retry_in_s": None}
    aside.rename(served)
    assert source.refresh() is False and locator.fetches == 1
    assert source.status() == {"stale": False, "error": None, "failures": 0, "retry_in_s": None}


def test_retry_in_s_is_the_wait_left_to_a_tenth_never_below_zero(model_file, tmp_path):
    """The status's retry_in_s on an injected clock: what is left of the wait rounded to 0.1 s, 0.0 in its last
    twentieth of a second and once it is over (not negative), None with no retry pending."""
    served = tmp_path / "generator.onnx"
    shutil.copy(model_file, served)
    now = [0.0]
    source = ModelSource(FileLocator(served), None, retry_base_s=2.0, clock=lambda: now[0])
    assert source.status()["retry_in_s"] is None
    served.write_bytes(b"a broken upload")
    assert source.refresh() is False and source.retry_at == 2.0
    for at, left in [(0.63, 1.4), (1.27, 0.7), (1.97, 0.0), (2.5, 0.0)]:
        now[0] = at
        retry_in = source.status()["retry_in_s"]
        assert retry_in == left and isinstance(retry_in, float), (at, retry_in)


def test_a_failed_load_names_the_error_and_is_logged_at_failures_1_2_4_8(model_file, tmp_path, caplog):
    """Each failed load of a new file keeps the served model; last_error names the loader's error, and the
    failure is logged at the 1st, 2nd, 4th and 8th failure (not every one): the model kept, the error,
    the failure's number and when the next try is."""
    served = tmp_path / "generator.onnx"
    shutil.copy(model_file, served)
    now = [0.0]
    source = ModelSource(FileLocator(served), None, retry_base_s=2.0, retry_max_s=60.0, clock=lambda: now[0])
    version = source.served.version
    served.write_bytes(b"a broken upload")
    with caplog.at_level("ERROR", logger="ganops.serving.app"):
        for _ in range(9):
            assert source.refresh() is False
            now[0] = source.retry_at
    assert source.last_error.startswith(f"ModelError: {served}: not a loadable ONNX model")
    logged = failure_logs(caplog)
    assert [int(m.split("; failure ")[1].split(",")[0]) for m in logged] == [1, 2, 4, 8], logged
    assert logged[0] == f"keeping the current model (version {version}): {source.last_error}; failure 1, next try in 2.0 s"
    assert logged[3].endswith("; failure 8, next try in 60.0 s")


def test_a_failed_first_load_is_logged_as_keeping_no_model(tmp_path, caplog):
    """A broken file from the start: nothing to keep, the log says so."""
    served = tmp_path / "generator.onnx"
    served.write_bytes(b"a broken upload")
    with caplog.at_level("ERROR", logger="ganops.serving.app"):
        source = ModelSource(FileLocator(served), None, clock=lambda: 0.0)
    assert source.served is None and source.failures == 1
    (logged,) = failure_logs(caplog)
    assert logged.startswith("keeping the current model (no model): ModelError: ")
    assert logged.endswith("; failure 1, next try in 2.0 s")


def test_a_locator_that_cannot_be_read_is_retried_at_every_check_without_backoff(model_file, caplog):
    """The locator itself fails (a registry that doesn't answer): refresh returns False without raising, the
    served model goes on, stale, the error names the locator and the cause; no wait is set (the next check
    asks again) and the log says so. Readable again, unchanged: current, the error gone."""
    locator = UnreadableLocator(model_file)
    source = ModelSource(locator, None, clock=lambda: 0.0)
    locator.unreadable = True
    with caplog.at_level("ERROR", logger="ganops.serving.app"):
        assert source.refresh() is False
        assert source.refresh() is False
    error = f"cannot read {model_file}: OSError: the registry did not answer"
    assert source.status() == {"stale": True, "error": error, "failures": 2, "retry_in_s": None}
    assert source.generator is not None
    assert failure_logs(caplog) == [
        f"keeping the current model (version {source.served.version}): {error}; failure {n}, trying again at the next check"
        for n in (1, 2)]
    locator.unreadable = False
    assert source.refresh() is False
    assert not source.stale and source.status()["error"] is None and source.status()["retry_in_s"] is None


# --- the limiter's counts -------------------------------------------------------------------------------


def test_a_fresh_service_reports_its_bounds_and_no_load(model_file):
    """Before any request: nothing running, waiting, ever run or refused; the bounds as set."""
    app, _, _ = service(model_file, max_concurrent=2, max_queue=3)

    async def scenario() -> None:
        async with client(app) as http:
            load = (await http.get("/v1/model")).json()["load"]
        assert load == {"running": 0, "waiting": 0, "peak_running": 0, "rejected": 0, "max_concurrent": 2,
                        "max_queue": 3}

    asyncio.run(scenario())

