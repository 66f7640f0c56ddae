"""Serving latency as operators measure it: paced arrivals, cold start and the reload blip,
`ganops serve` beside `mlflow models serve` tuned as its docs allow, the same ONNX generator.

benchmarks/serving.py compares throughput closed-loop (connections send as fast as answers come back).
Operators see something else: requests arrive at a rate nobody controls, and a slow answer does not
slow the arrivals. So here, for each side, in each round:

* cold start: from launching the server process to the first 200 of a generate request (polled
  every 20 ms with the real body); the server's Python start-up, imports and model load are inside.
* unloaded: one connection, one request at a time for ``--seconds``: the latency of a lone request.
* peak: closed loop, ``--concurrency`` connections for ``--seconds``: the requests/s this round's
  paced rates are fractions of.
* paced at 25, 50 and 75 % of that peak, ``--seconds`` each: hey's rate limit (-q) over 16
  connections, each sending when its tick comes and its previous answer is in. hey starts the 16
  tickers together, so the requests arrive in bursts of 16 every 16 / rate seconds, not spread out:
  each burst waits for the server's 2 generation slots, so these latencies are what bursts of 16 see
  (above what the same rate, evenly or randomly spread, would see). While answers come faster than
  a connection's ticks, the arrivals do not wait for the server, as an open loop's would not; a
  stall longer than that delays later requests instead of queueing them (coordinated omission), so
  the rate hey reached is printed beside the rate asked. p50, p99, max, errors.
* reload (ganops only: ``mlflow models serve`` cannot swap a model in place, its "reload" is a
  restart, i.e. the cold start): Poisson arrivals at ``--reload-rate`` (20 req/s) for ``--seconds``
  from a Python asyncio client (this script with ``--client``), which keeps up at that rate and reads
  each response's ``X-Model-Version``; half-way the served file is replaced (``os.replace`` of a new
  ONNX file with other weights, as ``dvc repro`` or a deploy would); ganops notices within
  serve.reload_interval_s. Reported: when responses first carry the new ``X-Model-Version``, p99 of
  the requests scheduled in the 5 s after the swap against the 5 s before it, the worst latency,
  errors (a swap must drop nothing).

Sides, each serving the same body (8 images a request by default: z float32 and labels as JSON
numbers, float32 output as JSON arrays; benchmarks/serving.py checks their outputs agree):

* ganops: ``ganops serve`` as it ships (serve.* defaults: one uvicorn process, onnxruntime intra-op
  threads = cores, at most serve.max_concurrent generations at once, serve.max_queue waiting).
* mlflow: ``mlflow models serve --workers 2 --env-manager local`` with the model saved with
  ``onnx_session_options={"intra_op_num_threads": 1, "inter_op_num_threads": 1}``: one onnxruntime
  thread per worker, two workers on two cores, as MLflow's onnx flavor docs allow tuning it.

The load generator is hey (Debian's package; Go: a few per cent of a core at these rates, where a
Python client took a core of the two and fell behind the server), on the same cores as the server,
the same for both sides; the cores it and the server used are printed for every point. Sides
alternate between rounds (a Latin square of two); figures are median [min-max] over the rounds.

    python benchmarks/serving_latency.py [--rounds 3] [--seconds 30] [--images 8] [--concurrency 8] [--reload-rate 20]

Last line: ``ganops_p99_ms_at_half_peak=<median over rounds>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

FRACTIONS = (0.25, 0.5, 0.75)
PACED_CONNECTIONS = 16  # hey's workers at a paced rate: within ganops' limiter (2 running + 16 waiting)
WINDOW_S = 5.0  # the reload's before/after windows
VERSION_HEADER = "x-model-version"


# ---------------------------------------------------------------- the load generator (--client)

async def _send(http: httpx.AsyncClient, url: str, body: bytes, scheduled: float, origin: float, records: list) -> None:
    lag = time.perf_counter() - scheduled  # how late this request's task started (any wait for a connection comes after)
    try:
        response = await http.post(url, content=body)
        status, version = str(response.status_code), response.headers.get(VERSION_HEADER)
    except httpx.HTTPError as error:
        status, version = type(error).__name__, None
    records.append((scheduled - origin, time.perf_counter() - scheduled, status, version, lag))


async def _client(url: str, bodies: list[bytes], seconds: float, rate: float) -> tuple[list, float]:
    """Poisson arrivals at ``rate`` per second, each request sent at its scheduled time whatever happened
    to the earlier ones. Records (scheduled s from start, latency s, status or error type, version, how
    late its task started, s), and the start as wall-clock time (time.time(), for the swap, timed in
    another process)."""
    records: list = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers={"content-type": "application/json"}) as http:
        await http.post(url, content=bodies[0])  # warm-up: the connection, the server's first-request paths
        origin, origin_wall = time.perf_counter(), time.time()
        print("started", flush=True)  # for the caller that times the swap into the run (reload_in_flight)
        end = origin + seconds
        rng = np.random.default_rng(0)
        tasks, scheduled, index = [], origin, 0
        while (scheduled := scheduled + rng.exponential(1.0 / rate)) < end:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(http, url, bodies[index % len(bodies)], scheduled, origin, records)))
            index += 1
        await asyncio.gather(*tasks)
    return records, origin_wall


def run_client(url: str, bodies_file: str, seconds: float, rate: float) -> dict:
    bodies = [line for line in Path(bodies_file).read_bytes().split(b"\n") if line]
    records, origin_wall = asyncio.run(_client(url, bodies, seconds, rate))
    return {"records": records, "origin_wall": origin_wall}


# ---------------------------------------------------------------- the benchmark

def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of a process and every process below it (mlflow's server runs its
    workers as child processes), from Linux /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except OSError:
        return None
    # utime, stime, then the waited-for children's cutime, cstime (workers that already exited)
    total = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total + sum(_cpu_seconds(child) or 0.0 for child in children)


def load(mode: str, url: str, bodies_file: Path, seconds: float, rate: float = 0.0, server_pid: int | None = None) -> dict:
    """One run of hey posting the body in ``bodies_file``: ``sequential`` (one connection), ``closed``
    (``rate`` connections back to back) or ``paced`` (``rate`` requests a second over PACED_CONNECTIONS);
    its summary, with the cores hey and the server used (on shared cores, a point where both together
    use them all was bound by the machine, not necessarily by the server)."""
    before, server_before, started = resource.getrusage(resource.RUSAGE_CHILDREN), None, time.perf_counter()
    if server_pid is not None:
        server_before = _cpu_seconds(server_pid)
    from serving import hey

    if mode == "sequential":
        out = hey(url, bodies_file, 1, seconds=seconds)
    elif mode == "closed":
        out = hey(url, bodies_file, int(rate), seconds=seconds)
    elif mode == "paced":
        out = hey(url, bodies_file, PACED_CONNECTIONS, seconds=seconds, rate=rate)
    else:
        raise ValueError(f"unknown load mode {mode!r}")
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_after = _cpu_seconds(server_pid) if server_pid is not None else None
    out["client_cores"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall
    if server_before is not None and server_after is not None:
        out["server_cores"] = (server_after - server_before) / wall
    return out


def cold_start(command: list[str], log: Path, url: str, body: bytes, env: dict, cwd: Path) -> tuple[subprocess.Popen, float]:
    """The server process, once it answered ``body`` with a 200, and the seconds that took."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    headers = {"content-type": "application/json"}
    while time.perf_counter() - started < 300:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.post(url, content=body, headers=headers, timeout=30).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"{url} gave no 200 within 300 s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def reload_blip(records: list, swap_at: float) -> dict:
    """The reload run's figures: ``swap_at`` is when the file was replaced, in the records' clock."""
    versions = sorted({r[3] for r in records if r[3]})
    first_version = next((r[3] for r in sorted(records) if r[3]), None)
    new = [r for r in sorted(records) if r[3] and r[3] != first_version]
    before = [r[1] * 1000 for r in records if swap_at - WINDOW_S <= r[0] < swap_at]
    after = [r[1] * 1000 for r in records if swap_at <= r[0] < swap_at + WINDOW_S]
    return {"versions": versions, "new_version_after_s": (new[0][0] + new[0][1] - swap_at) if new else None,
            "p99_before_ms": float(np.percentile(before, 99)) if before else float("nan"),
            "p99_after_ms": float(np.percentile(after, 99)) if after else float("nan"),
            "max_ms": max(r[1] for r in records) * 1000, "errors": sum(r[2] != "200" for r in records)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", nargs=4, metavar=("URL", "BODIES_FILE", "SECONDS", "RATE"),
                        help="run as the reload run's open-loop client and print its records as JSON")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of every measured run")
    parser.add_argument("--images", type=int, default=8, help="images per request")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop connections of the peak run")
    parser.add_argument("--reload-rate", type=float, default=20.0,
                        help="requests/s of the reload run (a Python open-loop client, which keeps up at this rate)")
    args = parser.parse_args()
    if args.client:
        url, bodies_file, seconds, rate = args.client
        print(json.dumps(run_client(url, bodies_file, float(seconds), float(rate))))
        return 0
    # the reload run swaps half-way and needs a full window on each side, with a second's slack for the swap
    if args.rounds < 1 or args.seconds < 2 * WINDOW_S + 2 or args.images < 1 or args.concurrency < 1:
        parser.error(f"--rounds, --images, --concurrency must be at least 1 and --seconds at least {2 * WINDOW_S + 2:g}")

    import mlflow.onnx
    import onnx
    import torch

    from _common import describe_recipe, median, print_environment, round_order, spread
    from _generator import benchmark_generator
    from ganops.config import ServeParams, load_params
    from ganops.models import build_generator
    from ganops.serving.export import write_onnx
    from serving import free_port, hey_version, like_for_like_bodies

    machine = print_environment(("onnxruntime", "mlflow", "fastapi", "uvicorn", "httpx"))
    params = load_params("params.yaml")
    generator, origin = benchmark_generator(params)
    print(describe_recipe(params, Path("params.yaml").resolve()) + ("; of it only the architecture: random weights"
          if origin.endswith("random weights") else f"; the project's params beside {origin}: `dvc status train` says "
          "whether they trained it"), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="ganops-latency-bench-"))
    metadata = {"model": params.model.model_dump(), "train": params.train.model_dump()}
    try:
        model_path = folder / "generator.onnx"
        write_onnx(generator, model_path, params.export, metadata)
        torch.manual_seed(1)  # the reload's model: the same architecture, other weights
        other = build_generator(generator.spec).eval()
        replacement = folder / "replacement.onnx"
        write_onnx(other, replacement, params.export, metadata)
        mlflow_model = folder / "mlflow_model"
        threads = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
        mlflow.onnx.save_model(onnx.load(str(model_path)), str(mlflow_model), onnx_session_options=threads)

        spec = generator.spec
        rng = np.random.default_rng(0)
        ganops_bodies, mlflow_bodies = [], []
        for _ in range(64):
            z = rng.standard_normal((args.images, spec.latent_dim), dtype=np.float32)
            labels = (np.arange(args.images) % spec.num_classes).tolist() if spec.conditional else None
            ganops_body, mlflow_body = like_for_like_bodies(z, labels)
            ganops_bodies.append(ganops_body)
            mlflow_bodies.append(mlflow_body)
        files = {"ganops": folder / "ganops.jsonl", "mlflow": folder / "mlflow.jsonl"}
        files["ganops"].write_text("\n".join(ganops_bodies) + "\n")
        files["mlflow"].write_text("\n".join(mlflow_bodies) + "\n")
        one = {side: folder / f"{side}.json" for side in files}  # what hey sends: the first body, every time
        for side in files:
            one[side].write_text(ganops_bodies[0] if side == "ganops" else mlflow_bodies[0])

        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("GANOPS_API_KEY", None)

        def command(side: str, port: int) -> tuple[list[str], str]:
            if side == "ganops":
                return ([str(bin_dir / "ganops"), "serve", "--model", str(model_path), "--port", str(port)],
                        f"http://127.0.0.1:{port}/v1/generate")
            return ([str(bin_dir / "mlflow"), "models", "serve", "-m", str(mlflow_model), "--env-manager", "local",
                     "-h", "127.0.0.1", "-p", str(port), "--workers", "2"], f"http://127.0.0.1:{port}/invocations")

        defaults = ServeParams()
        print(f"generator: {origin}; {args.images} images a request, z float32 in, float32 JSON out")
        print(f"ganops serve: serve.* defaults (intra-op {defaults.intra_op_threads or os.cpu_count()}, max_concurrent "
              f"{defaults.max_concurrent}, max_queue {defaults.max_queue}, reload_interval_s {defaults.reload_interval_s})")
        print(f"mlflow models serve: --workers 2 --env-manager local, onnx_session_options {threads}")
        print(f"each run {args.seconds:g} s; load: {hey_version()}; peak: closed loop, {args.concurrency} connections; "
              f"paced (hey -q) over {PACED_CONNECTIONS} connections at {', '.join(f'{f:.0%}' for f in FRACTIONS)} of "
              f"the round's peak; reload: Python open-loop client at {args.reload_rate:g} req/s; {args.rounds} round(s)")

        sides = ("ganops", "mlflow")
        results: dict[str, list[dict]] = {side: [] for side in sides}
        for index in range(args.rounds):
            for side in round_order(list(sides), index):
                blip = None
                write_onnx(generator, model_path, params.export, metadata)  # each round starts from the same file
                port = free_port()
                argv, url = command(side, port)
                body = files[side].read_bytes().split(b"\n")[0]
                process, started_s = cold_start(argv, folder / f"{side}.log", url, body, env, folder)
                try:
                    row = {"cold_start_s": started_s}
                    row["unloaded"] = load("sequential", url, one[side], args.seconds, server_pid=process.pid)
                    row["peak"] = load("closed", url, one[side], args.seconds, args.concurrency, server_pid=process.pid)
                    for fraction in FRACTIONS:
                        rate = fraction * row["peak"]["rps"]
                        row[fraction] = load("paced", url, one[side], args.seconds, rate, server_pid=process.pid)
                        row[fraction]["rate"] = rate
                    if side == "ganops":
                        blip = reload_in_flight(url, files[side], args.seconds, args.reload_rate, replacement,
                                                model_path, folder)
                        row["reload"] = blip
                finally:
                    stop(process)
                results[side].append(row)
                print(f"round {index + 1} {side}: cold start {row['cold_start_s']:.1f} s; unloaded p50 "
                      f"{row['unloaded']['p50_ms']:.1f} ms; peak {row['peak']['rps']:.1f} req/s; "
                      + "; ".join(f"{f:.0%} p50 {row[f]['p50_ms']:.0f} p99 {row[f]['p99_ms']:.0f} ms err "
                                  f"{row[f]['errors']} {row[f]['statuses']} cores "
                                  f"{row[f].get('server_cores', float('nan')):.2f}+{row[f]['client_cores']:.2f}"
                                  for f in FRACTIONS)
                      + (f"; reload p99 {blip['p99_before_ms']:.0f} -> {blip['p99_after_ms']:.0f} ms, "
                         f"new version after {blip['new_version_after_s'] or float('nan'):.1f} s, "
                         f"err {blip['errors']}" if blip else ""),
                      flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    def cores(run: dict) -> float:
        return run.get("server_cores", float("nan")) + run["client_cores"]

    def cell(side: str, get, digits: int = 1) -> str:
        return spread([get(row) for row in results[side]], digits)

    print(f"\n{'':34s} {'ganops serve':>26s} {'mlflow models serve -w 2':>26s}")
    lines = [("cold start to first 200, s", lambda r: r["cold_start_s"], 1),
             ("unloaded p50, ms", lambda r: r["unloaded"]["p50_ms"], 1),
             ("unloaded p99, ms", lambda r: r["unloaded"]["p99_ms"], 1),
             (f"peak, req/s ({args.concurrency} clients)", lambda r: r["peak"]["rps"], 1),
             ("peak: cores server + client", lambda r: cores(r["peak"]), 2)]
    for fraction in FRACTIONS:
        lines += [(f"{fraction:.0%} of peak: rate asked, req/s", lambda r, f=fraction: r[f]["rate"], 1),
                  (f"{fraction:.0%} of peak: rate got, req/s", lambda r, f=fraction: r[f]["rps"], 1),
                  (f"{fraction:.0%} of peak: p50, ms", lambda r, f=fraction: r[f]["p50_ms"], 1),
                  (f"{fraction:.0%} of peak: p99, ms", lambda r, f=fraction: r[f]["p99_ms"], 1),
                  (f"{fraction:.0%} of peak: errors", lambda r, f=fraction: r[f]["errors"], 0),
                  (f"{fraction:.0%} of peak: client cores", lambda r, f=fraction: r[f]["client_cores"], 2),
                  (f"{fraction:.0%} of peak: cores server + client", lambda r, f=fraction: cores(r[f]), 2)]
    for label, get, digits in lines:
        print(f"{label:34s} {cell('ganops', get, digits):>26s} {cell('mlflow', get, digits):>26s}")
    reloads = [row["reload"] for row in results["ganops"]]
    swapped_after = [r["new_version_after_s"] for r in reloads if r["new_version_after_s"] is not None]
    print(f"reload at {args.reload_rate:g} req/s (ganops; mlflow: restart = cold start): new version served after "
          f"{spread(swapped_after, 1) if swapped_after else 'never'} s; p99 "
          f"{WINDOW_S:g} s before {spread([r['p99_before_ms'] for r in reloads], 0)} ms, after "
          f"{spread([r['p99_after_ms'] for r in reloads], 0)} ms; worst {spread([r['max_ms'] for r in reloads], 0)} ms; "
          f"errors {sum(r['errors'] for r in reloads)}; versions seen per run {[len(r['versions']) for r in reloads]}")
    failed = [side for side in sides for row in results[side]
              if any(row[f]["errors"] for f in FRACTIONS) or row["unloaded"]["errors"] or row["peak"]["errors"]]
    failed += ["ganops reload"] * sum(bool(r["errors"]) or len(r["versions"]) != 2 for r in reloads)
    if failed:
        print(f"FAILED: errors or a reload that did not swap in: {sorted(set(failed))}")
    # Where server and load generator together used (nearly) every core, the cores, not only the server, may bound it.
    saturated = sorted({f"{side} {f:.0%}" for side in sides for row in results[side] for f in FRACTIONS
                        if cores(row[f]) >= 0.9 * (os.cpu_count() or 1)})
    print(f"points where server + load generator used >= 90% of the {os.cpu_count()} cores: {saturated or 'none'}")
    machine.finish()
    print(f"ganops_p99_ms_at_half_peak={median([row[0.5]['p99_ms'] for row in results['ganops']]):.1f}")
    return 1 if failed else 0


def reload_in_flight(url: str, bodies_file: Path, seconds: float, rate: float, replacement: Path, served: Path,
                     folder: Path) -> dict:
    """Open-loop load at ``rate`` while, half-way, ``served`` is replaced by a copy of ``replacement``."""
    client = subprocess.Popen([sys.executable, __file__, "--client", url, str(bodies_file), str(seconds), str(rate)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # half-way through the run, timed from the client's start line (after its warm-up request); the
    # swap's moment is converted to the client's clock by wall-clock time afterwards
    if client.stdout.readline().strip() != "started":
        raise RuntimeError(f"client failed to start:\n{client.stderr.read()[-3000:]}")
    time.sleep(seconds / 2)
    staged = folder / "staged.onnx"
    shutil.copyfile(replacement, staged)
    os.replace(staged, served)
    swapped_wall = time.time()
    out, err = client.communicate(timeout=seconds * 4 + 300)
    if client.returncode != 0:
        raise RuntimeError(f"client failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    swap_at = swapped_wall - result["origin_wall"]
    if not WINDOW_S <= swap_at <= seconds - WINDOW_S:
        raise RuntimeError(f"the swap came {swap_at:.1f} s into a {seconds:g} s run: no {WINDOW_S:g} s windows around it")
    return reload_blip(result["records"], swap_at)


if __name__ == "__main__":
    sys.exit(main())
