"""HTTP serving: `ganops serve` vs `mlflow models serve`, the same ONNX generator, like for like.

What is compared
----------------
Both servers load the same file: the benchmark generator (the trained one when present, else the
params.yaml architecture with seeded random weights) written once by ganops' ``write_onnx``; MLflow
gets it through ``mlflow.onnx.save_model`` (stock onnx flavor, no signature, no session options).

* Like for like (the comparison): identical work and identical encodings. Every request carries the
  same latent vectors and labels (8 images a request by default; z float32 from a seeded normal,
  labels the classes in turn), written once as JSON numbers and sent byte for byte as

    - ganops: ``POST /v1/generate`` ``{"z": [[...], ...], "labels": [...], "format": "floats"}``
    - MLflow: ``POST /invocations`` ``{"inputs": {"z": [[...], ...], "labels": [...]}}``

  and both answer with the generator's float32 output as JSON float arrays (ganops:
  ``{"images": [...], "shape": ..., ...}``; MLflow: ``{"predictions": {"images": [...]}}``). Before
  any timing, the same body goes to every server and the decoded outputs must agree (as float32,
  max |difference| <= 1e-6, and with a local onnxruntime run of the same file); the mean response
  size of each is printed (ganops writes each float32 in its shortest round-tripping form, MLflow's
  json writes the float64 repr of each float32 value: same numbers, more bytes). MLflow's stock
  onnx flavor has no binary or PNG output, so there is no binary like-for-like case.
* MLflow as its docs advise tuning it: ``-w/--workers`` (uvicorn worker processes, default 1). It
  is measured at ``--workers 1`` and ``--workers 2`` (this machine's 2 cores), ``--env-manager
  local``; onnxruntime inside it runs with its defaults (the flavor's SessionOptions untouched:
  intra-op threads 0 = onnxruntime's choice, one per physical core). ganops is compared with the
  FASTER of the two (by median requests/s over the rounds).
* ganops as it ships: ``ganops serve`` with default settings (no params.yaml: serve.* defaults), one
  uvicorn process; the endpoint runs on FastAPI's thread pool; onnxruntime intra-op threads =
  serve.intra_op_threads (null: os.cpu_count()), inter-op 1, sequential execution.
* A product feature, NOT part of the comparison: ganops' own seed-in/uint8-out mode,
  ``{"n": 8, "seed": i, "format": "array"}`` (a few bytes in, base64 uint8 out), which MLflow has
  no counterpart for. Reported on its own line.

How it is measured
------------------
All servers run as subprocesses on loopback, started once and left running (idle while another is
measured). The load comes from a separate process (this script with ``--client``): N client
threads (default 32), one keep-alive httpx connection each, bodies pre-encoded to bytes and read
from a file; each thread first sends one untimed warm-up request, then all start together and post
their share of the bodies one after the other (default 25 each, so 800 requests, 6,400 images per
side-run; a full run takes about 2 minutes on 2 cores). Responses are counted (non-200 or a
transport error is an error), not decoded. The client shares the 2 cores with the servers, the
same for every side (it costs the faster server more). Every round runs every side,
in alternating order (round 1 in the listed order, round 2 reversed, ...; default 3 rounds).
Reported per side: requests/s and images/s as median [min-max] over the rounds, the median of the
rounds' p50 and p99 latencies (per request, under load), total errors; the like-for-like ratio
(ganops requests/s / faster MLflow's, same round) per round and its median, last, as
``throughput_vs_mlflow_serve=<median ratio>``. Exit status 1 if any side had an error.

    python benchmarks/serving.py [--rounds 3] [--clients 32] [--requests-per-client 25] [--images 8]
    python benchmarks/serving.py --client URL BODIES_FILE CLIENTS   (the load generator; prints JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

MLFLOW_WORKERS = (1, 2)
LIKE = "ganops z->floats"
SEEDED = "ganops seed->uint8"
TOLERANCE = 1e-6


# ---------------------------------------------------------------- the load generator (--client)

def run_client(url: str, bodies_file: str, clients: int) -> dict:
    """``clients`` threads post the file's bodies (one JSON body a line): client c sends lines c,
    c + clients, ...; one untimed warm-up request each first, then all start at once."""
    bodies = [line for line in Path(bodies_file).read_bytes().split(b"\n") if line]
    shares = [bodies[c::clients] for c in range(clients)]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    headers = {"content-type": "application/json"}

    def client(own: list[bytes]) -> None:
        with httpx.Client(timeout=120, headers=headers) as http:
            try:
                http.post(url, content=own[0])  # warm-up: connection, server threads, caches
            except httpx.HTTPError:
                pass
            ready.wait()
            for body in own:
                start = time.perf_counter()
                try:
                    status = str(http.post(url, content=body).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=client, args=(own,)) for own in shares if own]
    for thread in threads:
        thread.start()
    for _ in range(clients - len(threads)):  # clients with no body (fewer bodies than clients)
        threading.Thread(target=ready.wait).start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"requests": len(latencies), "errors": len(latencies) - statuses.get("200", 0), "statuses": statuses,
            "wall_s": wall, "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


# ---------------------------------------------------------------- servers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], log: Path, ready_url: str, **kwargs) -> subprocess.Popen:
    """A server with its output in a file (an unread pipe would fill and block it), once it answers."""
    with open(log, "w") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, **kwargs)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[0]} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{ready_url} not ready after 180 s:\n{log.read_text(errors='replace')[-3000:]}")


def decode_floats(side: str, content: bytes) -> np.ndarray:
    answer = json.loads(content)
    images = answer["predictions"]["images"] if side.startswith("mlflow") else answer["images"]
    return np.asarray(images, dtype=np.float64).astype(np.float32)


def like_for_like_bodies(z: np.ndarray, labels: list[int] | None) -> tuple[str, str]:
    """The same latent vectors and labels as ganops' and MLflow's JSON request bodies, each float32
    in its shortest round-tripping form: (ganops /v1/generate body, MLflow /invocations body)."""
    import orjson

    text = orjson.dumps(z, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    feeds = f'"z":{text}' + (f',"labels":{json.dumps(labels)}' if labels is not None else "")
    return f'{{{feeds},"format":"floats"}}', f'{{"inputs":{{{feeds}}}}}'


def measure(url: str, bodies_file: Path, clients: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--client", url, str(bodies_file), str(clients)],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"client failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmark

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", nargs=3, metavar=("URL", "BODIES_FILE", "CLIENTS"),
                        help="run as the load generator and print its result as JSON")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=25)
    parser.add_argument("--images", type=int, default=8, help="images per request")
    args = parser.parse_args()
    if args.client:
        url, bodies_file, clients = args.client
        print(json.dumps(run_client(url, bodies_file, int(clients))))
        return 0
    if args.rounds < 1 or args.clients < 1 or args.requests_per_client < 1 or args.images < 1:
        parser.error("--rounds, --clients, --requests-per-client and --images must be at least 1")

    import mlflow.onnx
    import onnx

    from _common import describe_recipe, median, print_environment, round_order, spread
    from _generator import benchmark_generator
    from ganops.config import ServeParams, load_params
    from ganops.serving import OnnxGenerator
    from ganops.serving.export import write_onnx

    machine = print_environment(("onnxruntime", "mlflow", "fastapi", "uvicorn", "httpx"))
    params = load_params("params.yaml")
    generator, origin = benchmark_generator(params)
    print(describe_recipe(params, Path("params.yaml").resolve()) + ("; of it only the architecture: random weights"
          if origin.endswith("random weights") else f"; the project's params beside {origin}: `dvc status train` says "
          "whether they trained it"), flush=True)
    serve_defaults = ServeParams()
    n, total = args.images, args.clients * args.requests_per_client
    folder = Path(tempfile.mkdtemp(prefix="ganops-serving-bench-"))
    processes: list[subprocess.Popen] = []
    try:
        model_path = folder / "generator.onnx"
        write_onnx(generator, model_path, params.export,
                   {"model": params.model.model_dump(), "train": params.train.model_dump()})
        mlflow_model = folder / "mlflow_model"
        mlflow.onnx.save_model(onnx.load(str(model_path)), str(mlflow_model))
        local = OnnxGenerator(model_path, providers=["CPUExecutionProvider"])
        spec = local.spec

        # the request bodies, encoded once: the same z and labels for ganops and MLflow
        rng = np.random.default_rng(0)
        like_ganops, like_mlflow, inputs = [], [], []
        for _ in range(total):
            z = rng.standard_normal((n, spec.latent_dim), dtype=np.float32)
            labels = (np.arange(n) % spec.num_classes).tolist() if spec.conditional else None
            inputs.append((z, labels))
            ganops_body, mlflow_body = like_for_like_bodies(z, labels)
            like_ganops.append(ganops_body)
            like_mlflow.append(mlflow_body)
        seeded = [json.dumps({"n": n, "seed": i, "format": "array"}) for i in range(total)]
        files = {}
        for name, bodies in (("ganops_like", like_ganops), ("mlflow_like", like_mlflow), ("ganops_seeded", seeded)):
            files[name] = folder / f"{name}.jsonl"
            files[name].write_text("\n".join(bodies) + "\n")

        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("GANOPS_API_KEY", None)
        port = free_port()
        processes.append(start([str(bin_dir / "ganops"), "serve", "--model", str(model_path), "--port", str(port)],
                               folder / "ganops.log", f"http://127.0.0.1:{port}/readyz", cwd=folder, env=env))
        ganops_url = f"http://127.0.0.1:{port}/v1/generate"
        sides = {LIKE: (ganops_url, files["ganops_like"]), SEEDED: (ganops_url, files["ganops_seeded"])}
        for workers in MLFLOW_WORKERS:
            port = free_port()
            processes.append(start(
                [str(bin_dir / "mlflow"), "models", "serve", "-m", str(mlflow_model), "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", str(port), "--workers", str(workers)],
                folder / f"mlflow-w{workers}.log", f"http://127.0.0.1:{port}/ping", cwd=folder, env=env))
            sides[f"mlflow -w {workers}"] = (f"http://127.0.0.1:{port}/invocations", files["mlflow_like"])
        mlflow_sides = [f"mlflow -w {workers}" for workers in MLFLOW_WORKERS]
        order = [LIKE, *mlflow_sides, SEEDED]

        kind = "conditional" if spec.conditional else "unconditional"
        print(f"generator: {origin}; latent_dim {spec.latent_dim}, output {spec.channels}x{spec.resolution}x"
              f"{spec.resolution}, {kind}; ONNX {model_path.stat().st_size} bytes")
        threads = serve_defaults.intra_op_threads or os.cpu_count()
        print(f"ganops serve: 1 uvicorn process (serve.* defaults), onnxruntime intra-op {threads} "
              f"(serve.intra_op_threads={serve_defaults.intra_op_threads}), inter-op 1, sequential")
        print(f"mlflow models serve: --env-manager local, --workers {' and '.join(map(str, MLFLOW_WORKERS))}; "
              "onnxruntime SessionOptions defaults (intra-op 0: onnxruntime's choice)")
        print(f"load: separate client process, {args.clients} threads x {args.requests_per_client} requests x "
              f"{n} images = {total} requests per side-run (+{args.clients} warm-up); {args.rounds} round(s), "
              "alternating order; all on this machine (loopback)")

        # before timing: the same bodies to every side; the outputs must agree, and their sizes
        check = min(8, total)
        sizes: dict[str, list[int]] = {side: [] for side in order}
        worst = 0.0
        for index in range(check):
            z, labels = inputs[index]
            reference = local.run(z, None if labels is None else np.asarray(labels))
            for side in order:
                url, bodies_file = sides[side]
                body = bodies_file.read_text().splitlines()[index]
                response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=120)
                if response.status_code != 200:
                    raise RuntimeError(f"{side}: HTTP {response.status_code}: {response.text[:500]}")
                sizes[side].append(len(response.content))
                if side != SEEDED:
                    got = decode_floats(side, response.content)
                    if got.shape != reference.shape:
                        raise RuntimeError(f"{side}: shape {got.shape}, expected {reference.shape}")
                    worst = max(worst, float(np.abs(got - reference).max()))
            if worst > TOLERANCE:
                raise RuntimeError(f"outputs disagree: max |difference| {worst:.3g} > {TOLERANCE}")
        print(f"agreement: {check} identical bodies, every like-for-like output vs the local onnxruntime run: "
              f"max |difference| {worst:.3g} (<= {TOLERANCE:g}, float32)")
        for side in order:
            print(f"mean response size, {side}: {np.mean(sizes[side]):,.0f} bytes")
        print("binary like for like: not possible (MLflow's stock onnx flavor answers JSON only: no binary or PNG "
              "output); ganops' uint8 mode is reported as a feature, not compared")

        results: dict[str, list[dict]] = {side: [] for side in order}
        for r in range(args.rounds):
            parts = []
            for side in round_order(order, r):
                url, bodies_file = sides[side]
                result = measure(url, bodies_file, args.clients)
                results[side].append(result)
                parts.append(f"{side} {result['rps']:.1f} req/s p50 {result['p50_ms']:.0f} ms p99 "
                             f"{result['p99_ms']:.0f} ms errors {result['errors']}")
            print(f"round {r + 1}: " + "; ".join(parts))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)

    faster = max(mlflow_sides, key=lambda side: median([x["rps"] for x in results[side]]))
    ratios = [ours["rps"] / theirs["rps"] for ours, theirs in zip(results[LIKE], results[faster])]
    print(f"{'side':20s} {'requests/s':>22s} {'images/s':>24s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} "
          f"{'response bytes':>15s}")
    for side in order:
        runs = results[side]
        rps = [x["rps"] for x in runs]
        errors = sum(x["errors"] for x in runs)
        label = side + (" *" if side == faster else "")
        print(f"{label:20s} {spread(rps, 1):>22s} {spread([v * n for v in rps], 0):>24s} "
              f"{median([x['p50_ms'] for x in runs]):8.1f} {median([x['p99_ms'] for x in runs]):8.1f} "
              f"{errors:>4d}/{sum(x['requests'] for x in runs):<5d}{np.mean(sizes[side]):>12,.0f}")
    print(f"* the faster MLflow configuration (by median requests/s): {faster}")
    print(f"product feature, not a comparison: {SEEDED} (seed in, base64 uint8 out) "
          f"{spread([x['rps'] * n for x in results[SEEDED]], 0)} images/s")
    print(f"like-for-like ratio ({LIKE} / {faster}) per round: {', '.join(f'{v:.2f}' for v in ratios)}; "
          f"median {median(ratios):.2f}")
    failed = [side for side in order if any(x["errors"] for x in results[side])]
    if failed:
        print("errors in: " + ", ".join(f"{side} {[x['statuses'] for x in results[side]]}" for side in failed))
    machine.finish()
    print(f"throughput_vs_mlflow_serve={median(ratios):.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
