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
measured). The load comes from hey (Debian's package; Go, a few per cent of a core at these rates,
where a Python client took a core of the two and fell behind the servers): N concurrent keep-alive
connections (default 16, within ganops' limiter: serve.max_concurrent 2 running + serve.max_queue 16
waiting; more would be answered 503 with Retry-After, as the README says), each posting the same
pre-encoded body (the first of the checked ones) one request after another; an untimed run of one
request per connection first, then N x requests-per-client timed requests (default 16 x 50 = 800,
6,400 images per side-run). A response other than 200, or a transport error, is an error. Every round
runs every side, in rotating order (default 3 rounds). Reported per side: requests/s and images/s as
median [min-max] over the rounds, the median of the rounds' p50 and p99 latencies (hey's, per request
under load), total errors; the like-for-like ratio (ganops requests/s / faster MLflow's, same round)
per round and its median, last, as ``throughput_vs_mlflow_serve=<median ratio>``. Exit status 1 if
any side had an error.

    python benchmarks/serving.py [--rounds 3] [--clients 16] [--requests-per-client 50] [--images 8]
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
import time
from pathlib import Path

import httpx
import numpy as np

MLFLOW_WORKERS = (1, 2)
LIKE = "ganops z->floats"
SEEDED = "ganops seed->uint8"
TOLERANCE = 1e-6


# ---------------------------------------------------------------- the load generator (hey)

HEY = "hey"  # Debian's package hey (apt-get install hey): Go, far less CPU per request than a Python client


def parse_hey(summary: str) -> dict:
    """hey's text summary -> requests, errors, requests/s, p50 and p99 (ms), status codes."""
    import re

    def number(pattern: str) -> float:
        found = re.search(pattern, summary)
        if not found:
            raise RuntimeError(f"hey's summary has no {pattern!r}:\n{summary[-2000:]}")
        return float(found.group(1))

    statuses = {code: int(count) for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", summary)}
    errors = sum(int(count) for count in re.findall(r"^\s+\[(\d+)\]\s+\S", summary.split("Error distribution:")[-1],
                                                   re.M)) if "Error distribution:" in summary else 0
    requests = sum(statuses.values()) + errors
    return {"requests": requests, "errors": requests - statuses.get("200", 0), "statuses": statuses,
            "rps": number(r"Requests/sec:\s+([\d.]+)"), "p50_ms": number(r"50%+ in ([\d.]+) secs") * 1000,
            "p99_ms": number(r"99%+ in ([\d.]+) secs") * 1000, "max_ms": number(r"Slowest:\s+([\d.]+) secs") * 1000}


def hey_version() -> str:
    """hey prints no version; Debian's package says which."""
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"], capture_output=True, text=True)
    return f"Debian hey {done.stdout.strip()}" if done.returncode == 0 else "hey, version unknown"


def run_hey(url: str, body_file: Path, clients: int, requests: int = 0, seconds: float = 0.0, rate: float = 0.0) -> str:
    """POSTs of the body in ``body_file`` from ``clients`` concurrent keep-alive connections: ``requests``
    of them, or as many as ``seconds`` allow; ``rate``: at most that many a second in all (hey's -q,
    per connection: each waits for its tick, then for its answer). Returns hey's text summary."""
    command = [HEY, "-c", str(clients), "-m", "POST", "-T", "application/json", "-D", str(body_file), "-t", "120"]
    command += ["-z", f"{seconds:g}s"] if seconds else ["-n", str(requests)]
    command += ["-q", f"{rate / clients:.4f}"] if rate else []
    command.append(url)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def hey(url: str, body_file: Path, clients: int, requests: int = 0, seconds: float = 0.0, rate: float = 0.0) -> dict:
    """``run_hey``'s run, its summary parsed (parse_hey)."""
    return parse_hey(run_hey(url, body_file, clients, requests, seconds, rate))


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


def measure(url: str, body_file: Path, clients: int, requests: int) -> dict:
    """One untimed request per connection first (connections, server threads, caches), then the timed run."""
    warm_up = run_hey(url, body_file, clients, clients)  # too few answers for hey to print a 99th percentile
    if f"[200]\t{clients} responses" not in warm_up:
        raise RuntimeError(f"the warm-up requests failed:\n{warm_up[-3000:]}")
    return hey(url, body_file, clients, requests)


# ---------------------------------------------------------------- the benchmark

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16,
                        help="concurrent connections (default 16: within ganops' serve.max_concurrent 2 + max_queue 16)")
    parser.add_argument("--requests-per-client", type=int, default=50)
    parser.add_argument("--images", type=int, default=8, help="images per request")
    args = parser.parse_args()
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
    if not shutil.which(HEY):
        parser.error("needs hey, the load generator (Debian: apt-get install hey)")
    n, total = args.images, args.clients * args.requests_per_client
    check = 8  # bodies whose answers are compared between the sides before timing
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
        for _ in range(check):
            z = rng.standard_normal((n, spec.latent_dim), dtype=np.float32)
            labels = (np.arange(n) % spec.num_classes).tolist() if spec.conditional else None
            inputs.append((z, labels))
            ganops_body, mlflow_body = like_for_like_bodies(z, labels)
            like_ganops.append(ganops_body)
            like_mlflow.append(mlflow_body)
        seeded = [json.dumps({"n": n, "seed": i, "format": "array"}) for i in range(check)]
        files, timed = {}, {}  # the checked bodies, one a line; the first of them, which every timed request sends
        for name, bodies in (("ganops_like", like_ganops), ("mlflow_like", like_mlflow), ("ganops_seeded", seeded)):
            files[name] = folder / f"{name}.jsonl"
            files[name].write_text("\n".join(bodies) + "\n")
            timed[files[name]] = folder / f"{name}.json"
            timed[files[name]].write_text(bodies[0])

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
        print(f"load: hey ({hey_version()}), {args.clients} connections, {total} requests of {n} images per "
              f"side-run, each the same body (+{args.clients} untimed first); {args.rounds} round(s), "
              "alternating order; all on this machine (loopback)")

        # before timing: the same bodies to every side; the outputs must agree, and their sizes
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
                result = measure(url, timed[bodies_file], args.clients, total)
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
