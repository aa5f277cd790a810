#!/usr/bin/env python3
"""Starts N training workers on this machine, on 127.0.0.1, as a cluster scheduler would.

Each worker gets the same command and its own TF_CONFIG (the cluster's addresses
and its index; worker 0 is the chief). Output lines are prefixed with the worker's
index. SIGTERM or Ctrl-C is passed on to every worker (they checkpoint and stop);
when one worker fails, the others are stopped. Exits with the first non-zero
status, else 0.

    python scripts/launch_local.py --workers 2 -- reelml train configs/recommender.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def _pump(stream, prefix: str, out):
    for line in iter(stream.readline, ""):
        out.write(f"{prefix}{line}")
        out.flush()


def launch(command: list[str], workers: int, env: dict | None = None, grace_s: float = 30.0) -> int:
    """Runs `command` as `workers` workers of one cluster on 127.0.0.1; returns the exit status."""
    addresses = [f"127.0.0.1:{p}" for p in free_ports(workers)]
    procs, pumps = [], []
    for i in range(workers):
        worker_env = {**os.environ, **(env or {}), "TF_CONFIG": tf_config(addresses, i), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(command, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {i}] ", sys.stdout), daemon=True)
        pump.start()
        pumps.append(pump)

    def stop_all(signum=signal.SIGTERM):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def forward(signum, frame):
        stop_all(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        running = list(procs)
        while running:
            for p in list(running):
                code = p.poll()
                if code is None:
                    continue
                running.remove(p)
                if code != 0 and status == 0:
                    status = code
                    stop_all()  # a cluster with a dead worker cannot go on: stop the rest
                    deadline = time.monotonic() + grace_s
                    while any(q.poll() is None for q in running) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    for q in running:
                        if q.poll() is None:
                            q.kill()
            time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for pump in pumps:
            pump.join(timeout=5)
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="number of worker processes (default 2)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command every worker runs, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- reelml train configs/frames.yaml")
    if args.workers < 1:
        parser.error(f"--workers: got {args.workers}: expected at least 1")
    return launch(command, args.workers)


if __name__ == "__main__":
    sys.exit(main())
