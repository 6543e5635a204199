"""Load-test the HTTP service on loopback: bounded requests from local client threads, once per batching setting
(--max-batch 1 is unbatched); prints requests/s and latency for each.

python scripts/benchmark_serve.py --ckpt PATH [--requests 2000] [--concurrency 32] [--max-batch 1 32] [--seconds 60]
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from lstm_rec.checkpoint import load_network
from lstm_rec.serving.http import free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[1]


def load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> tuple[list[float], int, float]:
    """Send every body once (split over `concurrency` threads, each on one kept-alive connection), stopping early after
    `seconds`. The client is the standard library's: it takes little of the CPU that it shares with the server."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    address = urlsplit(url)

    def worker(share: list[bytes]) -> None:
        nonlocal errors
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        for body in share:
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            try:
                connection.request("POST", "/recommend", body, {"content-type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                ok = answer.status == 200
            except OSError:  # e.g. reset: count it, and go on with a new connection
                connection.close()
                ok = False
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors += not ok
        connection.close()

    threads = [threading.Thread(target=worker, args=(bodies[i::concurrency],)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def serve_and_load(args: argparse.Namespace, bodies: list[bytes], max_batch: int) -> dict:
    """Start scripts/serve.py with `max_batch`, warm it up, send `bodies`; its numbers."""
    port = free_port()
    command = [sys.executable, "scripts/serve.py", f"ckpt_path={args.ckpt}", f"port={port}", "log_level=warning"]
    command += [f"num_threads={args.server_threads}", f"max_batch={max_batch}", f"max_wait_ms={args.max_wait_ms}"]
    command += ["hydra.run.dir=logs/serve/benchmark", "hydra.output_subdir=null"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, server)
        load(url, bodies[:100], args.concurrency, args.seconds)  # warm-up
        latencies, errors, wall = load(url, bodies, args.concurrency, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    milliseconds = np.array(latencies) * 1000
    return {
        "max_batch": max_batch,
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint to serve")
    parser.add_argument("--requests", type=int, default=2000, help="requests per setting")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long, per setting")
    parser.add_argument("--session-length", type=int, default=5)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument(
        "--max-batch", type=int, nargs="+", default=[1, 32], help="the server's max_batch, one run each"
    )
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="the server's max_wait_ms")
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--output", help="also write the numbers to this JSON file")
    args = parser.parse_args()

    ids = load_network(args.ckpt).item_index.ids
    rng = np.random.default_rng(0)
    sessions = [rng.choice(ids, args.session_length).tolist() for _ in range(args.requests)]
    bodies = [json.dumps({"items": session, "k": args.k}).encode() for session in sessions]
    runs = [serve_and_load(args, bodies, max_batch) for max_batch in args.max_batch]
    settings = ("concurrency", "session_length", "k", "max_wait_ms", "server_threads")
    result = {**{name: getattr(args, name) for name in settings}, "runs": runs}
    print(f"{args.concurrency} clients, {args.session_length}-click sessions, k = {args.k}")
    print("| max_batch | requests | errors | requests/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print("| " + " | ".join(str(run[key]) for key in runs[0]) + " |")
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        ratio = last["requests_per_second"] / first["requests_per_second"]
        print(f"max_batch={last['max_batch']}: {ratio:.2f}x the requests/s of max_batch={first['max_batch']}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
