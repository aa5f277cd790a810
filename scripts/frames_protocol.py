"""A frames recipe over several seeds on the Intel scenes: chosen on validation, then tested once.

    python scripts/frames_protocol.py --choose [--config configs/frames_intel.yaml] [--seeds 1234] [--set key=value ...]
    python scripts/frames_protocol.py [--config configs/frames_intel.yaml] [--seeds 1 2 3] [--set key=value ...]

`--choose`: each seed trains on 80% of `train/` and reports the accuracy on the other 20% (stratified,
drawn by the seed; `--validation-split` to change it); the test images are not read (the run's
`held_out` is off). This is the mode every choice of the recipe was made in. The reported accuracy is
the last epoch's (the run keeps the best validation epoch too, which is reported beside it).

Without `--choose`: each seed trains the config as it is (all of `train/`), and tests once on `test/`.

One `reelml train` run per seed, each in a fresh process. Prints per seed and as mean +- sample standard
deviation: accuracy, epochs, the training time the loop measured (`train_seconds`, the epochs alone:
no start-up, decoding or export) and the whole process's wall time. `--json` writes them all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUN_ONE = """
import json, sys, time
from training.config import load_config
from training.train import train
held_out = sys.argv[1] == "test"
cfg = load_config(sys.argv[2], sys.argv[3:])
started = time.monotonic()
r = train(cfg, held_out=held_out)
last = r.history[-1]
vals = [h["val_accuracy"] for h in r.history if "val_accuracy" in h]
print("RESULT " + json.dumps({
    "test_accuracy": r.test_metrics.get("test_accuracy"), "val_accuracy_last": last.get("val_accuracy"),
    "val_accuracy_best": max(vals) if vals else None, "epochs": len(r.history),
    "train_seconds": last.get("train_seconds"), "seconds_in_train": time.monotonic() - started}))
"""


def run(config: str, seed: int, workdir: Path, overrides: list[str], mode: str) -> dict:
    sets = [f"seed={seed}", f"runs_dir={workdir / 'runs'}", f"export.dir={workdir / 'exports'}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "export.enabled=false", *overrides]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    started = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not the resumption of an earlier one
    proc = subprocess.run([sys.executable, "-c", RUN_ONE, mode, config, *sets], cwd=REPO, env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["process_seconds"] = time.monotonic() - started
            return result
    sys.exit(f"seed {seed} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/frames_intel.yaml")
    parser.add_argument("--choose", action="store_true", help="train on part of train/, report validation; no test")
    parser.add_argument("--validation-split", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 1234 with --choose, else 1 2 3")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--workdir", default="/tmp/reelml-frames-protocol")
    parser.add_argument("--json")
    args = parser.parse_args()
    seeds = args.seeds or ([1234] if args.choose else [1, 2, 3])
    mode = "choose" if args.choose else "test"
    overrides = ([f"data.validation_split={args.validation_split}"] if args.choose else []) + args.overrides
    key = "val_accuracy_last" if args.choose else "test_accuracy"

    per_seed = {}
    for seed in seeds:
        workdir = Path(args.workdir) / f"{mode}-seed-{seed}"
        r = per_seed[seed] = run(args.config, seed, workdir, overrides, mode)
        extra = f", best epoch {r['val_accuracy_best']:.4f}" if args.choose else ""
        print(f"seed {seed}: {key} {r[key]:.4f}{extra} ({r['epochs']} epochs, training "
              f"{(r['train_seconds'] or float('nan')) / 60:.2f} min, process {r['process_seconds'] / 60:.2f} min)",
              flush=True)

    print(f"\n{args.config} {' '.join('--set ' + o for o in overrides)}, seeds {seeds}")
    for name in (key, "val_accuracy_best", "epochs", "train_seconds", "process_seconds"):
        values = [per_seed[s][name] for s in seeds if per_seed[s].get(name) is not None]
        if len(values) == len(seeds):
            m, sd = mean_std(values)
            print(f"{name}: {m:.4f} +- {sd:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "mode": mode, "overrides": overrides,
                                               "per_seed": per_seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
