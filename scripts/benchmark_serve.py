"""Load-test the HTTP service on loopback: bounded requests from local client threads; prints req/s and latency.

python scripts/benchmark_serve.py --ckpt PATH [--requests 2000] [--concurrency 4] [--seconds 60]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from lstm_rec.checkpoint import load_network
from lstm_rec.serving.http import free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[1]


def load(url: str, bodies: list[dict], concurrency: int, seconds: float) -> tuple[list[float], int, float]:
    """Send every body once (split over `concurrency` threads), stopping early after `seconds`."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(share: list[dict]) -> None:
        nonlocal errors
        with httpx.Client(base_url=url, timeout=10) as client:
            for body in share:
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                ok = client.post("/recommend", json=body).status_code == 200
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors += not ok

    threads = [threading.Thread(target=worker, args=(bodies[i::concurrency],)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint to serve")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long")
    parser.add_argument("--session-length", type=int, default=5)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--output", help="also write the numbers to this JSON file")
    args = parser.parse_args()

    ids = load_network(args.ckpt).item_index.ids
    rng = np.random.default_rng(0)
    bodies = [{"items": rng.choice(ids, args.session_length).tolist(), "k": args.k} for _ in range(args.requests)]
    port = free_port()
    command = [sys.executable, "scripts/serve.py", f"ckpt_path={args.ckpt}", f"port={port}", "log_level=warning"]
    command += [f"num_threads={args.server_threads}", "hydra.run.dir=logs/serve/benchmark", "hydra.output_subdir=null"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server)
        load(url, bodies[:50], 1, args.seconds)  # warm-up
        latencies, errors, wall = load(url, bodies, args.concurrency, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    milliseconds = np.array(latencies) * 1000
    result = {
        "requests": len(latencies),
        "errors": errors,
        "concurrency": args.concurrency,
        "session_length": args.session_length,
        "k": args.k,
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
