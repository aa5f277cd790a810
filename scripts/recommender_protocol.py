"""A recommender recipe against TopPop, ALS and BPR in the same runs, over several seeds, on MovieLens 100K.

    python scripts/recommender_protocol.py [--config configs/recommender.yaml] [--seeds 1 2 3]
                                           [--data ../shared/data/movielens_100k/u.data | --data config]
                                           [--set key=value ...] [--workdir /tmp/reelml-protocol]

For each seed (which also draws the split: each user's latest rating for test, the one before for
validation, 99 never-seen candidates each), one `reelml train` run of the config. Inside that run the
model keeps its best epoch on validation HR@10, and the baselines are fitted on the same training
interactions: ALS with its grid chosen on validation HR@10, BPR, TopPop. All are ranked on the same test
candidates once. Nothing looks at test data to choose anything.

Prints, per seed and as mean +- sample standard deviation: validation and test HR@10 / NDCG@10 of the
model and of each baseline, the model's training wall time (its epochs, in the loop) and the baselines'
fit times. `--json` writes them all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# One training run in a fresh process (a clean TensorFlow state per run), reporting back as JSON.
RUN_ONE = """
import json, sys
from training.config import load_config
from training.train import train
cfg = load_config(sys.argv[1], sys.argv[2:])
r = train(cfg)
monitor = cfg.train.monitor
values = [h[monitor] for h in r.history]
best = values.index(max(values))  # the first best epoch: the one restore_best keeps
print("RESULT " + json.dumps({"finals": {k: float(v) for k, v in r.test_metrics.items()},
                             "val": {k: float(v) for k, v in r.history[best].items()}, "epochs": best + 1,
                             "epochs_trained": len(r.history)}))
"""

ROWS = [("model", "val_hr_at_10", "val_ndcg_at_10", "test_hr_at_10", "test_ndcg_at_10"),
        ("ALS", "val_als_hr_at_10", "val_als_ndcg_at_10", "test_als_hr_at_10", "test_als_ndcg_at_10"),
        ("BPR", "val_bpr_hr_at_10", "val_bpr_ndcg_at_10", "test_bpr_hr_at_10", "test_bpr_ndcg_at_10"),
        ("TopPop", "val_toppop_hr_at_10", "val_toppop_ndcg_at_10", "test_toppop_hr_at_10", "test_toppop_ndcg_at_10")]


def run(config: str, seed: int, workdir: Path, overrides: list[str]) -> dict:
    sets = [f"seed={seed}", f"runs_dir={workdir / 'runs'}", f"export.dir={workdir / 'exports'}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "export.verify=false", *overrides]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RUN_ONE, config, *sets], cwd=REPO, env=env, capture_output=True,
                          text=True)
    seconds = time.monotonic() - started
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["process_seconds"] = seconds
            return result
    sys.exit(f"seed {seed} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def figures(result: dict) -> dict:
    """Every figure of one run, by name: the model's validation ones from its kept epoch, the rest from the run."""
    out = dict(result["finals"])
    out.update({k: v for k, v in result["val"].items() if k.startswith("val_")})
    out["epochs"] = result["epochs"]
    out["process_seconds"] = result["process_seconds"]
    return out


def mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/recommender.yaml")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "movielens_100k" / "u.data"),
                        help="the interactions file (`data.path`); 'config' keeps the config's own data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--workdir", default="/tmp/reelml-protocol")
    parser.add_argument("--json")
    args = parser.parse_args()

    if args.data != "config":
        if not Path(args.data).exists():
            sys.exit(f"--data {args.data}: file not found (MovieLens 100K's u.data; or --data config)")
        args.overrides = [f"data.path={Path(args.data).resolve()}", "data.source=file", *args.overrides]
    per_seed = {}
    for seed in args.seeds:
        workdir = Path(args.workdir) / f"seed-{seed}"
        per_seed[seed] = figures(run(args.config, seed, workdir, args.overrides))
        f = per_seed[seed]
        print(f"seed {seed}: model test HR@10 {f['test_hr_at_10']:.4f} NDCG@10 {f['test_ndcg_at_10']:.4f} "
              f"(epoch {f['epochs']}, {f['process_seconds']:.0f} s); ALS {f.get('test_als_hr_at_10', float('nan')):.4f} / "
              f"{f.get('test_als_ndcg_at_10', float('nan')):.4f} ({f.get('als_fit_seconds', float('nan')):.1f} s)",
              flush=True)

    print(f"\n{args.config} {' '.join('--set ' + o for o in args.overrides)}, seeds {args.seeds}")
    print("| | val HR@10 | val NDCG@10 | test HR@10 | test NDCG@10 |")
    print("|---|---|---|---|---|")
    for name, *keys in ROWS:
        if not all(k in per_seed[s] for s in args.seeds for k in keys):
            continue
        cells = []
        for k in keys:
            m, sd = mean_std([per_seed[s][k] for s in args.seeds])
            cells.append(f"{m:.4f} +- {sd:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for key in ("process_seconds", "als_fit_seconds", "bpr_fit_seconds", "epochs"):
        if all(key in per_seed[s] for s in args.seeds):
            m, sd = mean_std([per_seed[s][key] for s in args.seeds])
            print(f"{key}: {m:.1f} +- {sd:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(per_seed, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
