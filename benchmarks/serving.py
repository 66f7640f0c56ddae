"""HTTP serving: `ganops serve` vs `mlflow models serve`, the same ONNX generator, 32 concurrent clients.

Both servers run as subprocesses on loopback with their default worker settings; the same client
(32 threads, a fixed number of requests each, 8 images per request) drives one, then the other.
ganops is asked by seed (``{"n": 8, "seed": i, "format": "array"}``, uint8 images back); MLflow's
pyfunc takes the latent vectors and labels in its ``inputs`` JSON and returns float arrays. Prints
throughput, p50/p99 latency and errors, and as the last line
``throughput_vs_mlflow_serve=<ganops requests/s / mlflow requests/s>``.

    python benchmarks/serving.py [--clients 32] [--requests-per-client 25] [--images 8]
"""

from __future__ import annotations

import argparse
import os
import platform
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

from _generator import benchmark_generator
from ganops.config import load_params
from ganops.export import write_onnx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stdout.read() if process.stdout else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {seconds} s")


def drive(url: str, bodies: list[list[dict]]) -> dict:
    """One thread per client, each posting its bodies in turn; returns throughput and latencies."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(own: list[dict]) -> None:
        with httpx.Client(timeout=60) as http:
            for body in own:
                start = time.perf_counter()
                try:
                    ok = http.post(url, json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors[0] += not ok

    threads = [threading.Thread(target=client, args=(own,)) for own in bodies]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"requests": len(latencies), "errors": errors[0], "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(latencies, 50) * 1000), "p99_ms": float(np.percentile(latencies, 99) * 1000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=25)
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    import mlflow.onnx
    import onnx

    params = load_params("params.yaml")
    generator, origin = benchmark_generator(params)
    spec = generator.spec
    folder = Path(tempfile.mkdtemp(prefix="ganops-serving-bench-"))
    processes: list[subprocess.Popen] = []
    try:
        model_path = folder / "generator.onnx"
        write_onnx(generator, model_path, params)
        mlflow_model = folder / "mlflow_model"
        mlflow.onnx.save_model(onnx.load(str(model_path)), str(mlflow_model))

        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("GANOPS_API_KEY", None)
        mlflow_port, ganops_port = free_port(), free_port()
        mlflow_server = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", str(mlflow_model), "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(mlflow_port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(mlflow_server)
        ganops_server = subprocess.Popen(
            [str(bin_dir / "ganops"), "serve", "--model", str(model_path), "--port", str(ganops_port)],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(ganops_server)
        wait_ready(f"http://127.0.0.1:{mlflow_port}/ping", mlflow_server)
        wait_ready(f"http://127.0.0.1:{ganops_port}/readyz", ganops_server)

        n, rng = args.images, np.random.default_rng(0)
        ganops_bodies, mlflow_bodies = [], []
        for c in range(args.clients):
            ganops_bodies.append([{"n": n, "seed": c * 1000 + r, "format": "array"} for r in range(args.requests_per_client)])
            own = []
            for _ in range(args.requests_per_client):
                inputs = {"z": rng.standard_normal((n, spec.latent_dim)).astype(np.float32).tolist()}
                if spec.conditional:
                    inputs["labels"] = (np.arange(n) % spec.num_classes).tolist()
                own.append({"inputs": inputs})
            mlflow_bodies.append(own)

        # one warm-up round each, then the measured runs
        drive(f"http://127.0.0.1:{ganops_port}/v1/generate", [b[:2] for b in ganops_bodies[:4]])
        drive(f"http://127.0.0.1:{mlflow_port}/invocations", [b[:2] for b in mlflow_bodies[:4]])
        ours = drive(f"http://127.0.0.1:{ganops_port}/v1/generate", ganops_bodies)
        theirs = drive(f"http://127.0.0.1:{mlflow_port}/invocations", mlflow_bodies)
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; client and both servers on this machine (loopback)")
    print(f"generator: {origin}; {args.clients} clients x {args.requests_per_client} requests, {args.images} images each")
    for name, result in (("ganops serve", ours), ("mlflow models serve", theirs)):
        print(f"{name:20s} {result['rps']:8.1f} req/s   p50 {result['p50_ms']:8.1f} ms   p99 {result['p99_ms']:8.1f} ms   "
              f"errors {result['errors']}/{result['requests']}")
    print(f"throughput_vs_mlflow_serve={ours['rps'] / theirs['rps']:.2f}")
    return 0 if ours["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
