"""1 worker vs 2 workers on this machine: training throughput of the same run, side by side.

    python scripts/bench_workers.py [--configs configs/frames.yaml configs/recommender.yaml] [--epochs 4] [--repeats 2]

Each config is trained by `reelml train` as one process, then by `scripts/launch_local.py
--workers 2` (two processes on 127.0.0.1 under MultiWorkerMirroredStrategy, the same
global batch), alternating (1, 2, 1, 2, ...). An epoch's time is read from the
timestamps MLflow gives each epoch's metrics; the first epoch (tracing, cache
filling) is left out. Reported: median seconds per epoch and the throughput ratio
(2 workers / 1 worker; above 1 means the cluster is faster).

On a 2-core machine two workers share the cores one worker already uses, and add
the all-reduce of every gradient over loopback gRPC, so a ratio below 1 is
expected here: the benchmark measures what the distribution costs, which a cluster
of real machines pays back with their extra cores or GPUs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def epoch_seconds(workdir: Path) -> list[float]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    stamps = sorted((m.step, m.timestamp) for m in client.get_metric_history(run.info.run_id, "loss"))
    return [(b[1] - a[1]) / 1000 for a, b in zip(stamps, stamps[1:])]


def run(config: str, workers: int, epochs: int, workdir: Path) -> list[float]:
    cli = [sys.executable, "-m", "training.cli", "train", str(REPO / config), "--set", f"train.epochs={epochs}",
           "--set", "export.enabled=false"]
    command = cli if workers == 1 else [sys.executable, str(REPO / "scripts" / "launch_local.py"), "--workers", str(workers), "--", *cli]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TF_CONFIG")}
    env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{config} with {workers} worker(s) failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return epoch_seconds(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/frames.yaml", "configs/recommender.yaml"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("| config | 1 worker: s/epoch | 2 workers: s/epoch | throughput 2 / 1 |")
    print("| --- | --- | --- | --- |")
    for config in args.configs:
        times = {1: [], 2: []}
        for _ in range(args.repeats):
            for workers in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    times[workers] += run(config, workers, args.epochs, Path(tmp))
        one, two = statistics.median(times[1]), statistics.median(times[2])
        print(f"| `{config}` | {one:.2f} | {two:.2f} | {one / two:.2f} |", flush=True)


if __name__ == "__main__":
    main()
