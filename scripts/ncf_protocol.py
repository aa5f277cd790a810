"""The NCF quality protocol on MovieLens 100K: GMF, MLP, then NeuMF from them, over several seeds.

    python scripts/ncf_protocol.py [--seeds 1 2 3] [--workdir /tmp/reelml-ncf] [--set key=value ...] [--json out.json]

For each seed (the seed also draws the split: each user's latest rating for test, the one before for
validation, 99 never-seen candidates each):

1. Selection, on validation only: `configs/recommender_ml100k_gmf.yaml`, `..._mlp.yaml`, then
   `configs/recommender_ml100k.yaml` (NeuMF initialised from the two). Each keeps its best epoch on
   validation HR@10; its test figures are reported as "held-out validation".
2. The final fit: the same three again with `data.train_on_validation=true` (each user's validation
   item joins training) for exactly the epochs step 1 chose, NeuMF pretrained from the refitted
   GMF and MLP. Nothing here looks at test data to choose anything.

Prints test HR@10 / NDCG@10 of both, TopPop from the same runs, mean and sample standard deviation
over the seeds. About 2.5 minutes per seed on 2 CPU cores. Needs ../shared/data/movielens_100k.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"gmf": "configs/recommender_ml100k_gmf.yaml", "mlp": "configs/recommender_ml100k_mlp.yaml",
           "neumf": "configs/recommender_ml100k.yaml"}
EXPORTS = {"gmf": "recommender-ml100k-gmf", "mlp": "recommender-ml100k-mlp"}

# One training run in a fresh process (a clean TensorFlow state per run), reporting back as JSON.
RUN_ONE = """
import json, sys
from training.config import load_config
from training.train import train
cfg = load_config(sys.argv[1], sys.argv[2:])
r = train(cfg)
val = [h.get("val_hr_at_10") for h in r.history]
best = val.index(max(val)) if None not in val else len(val) - 1  # the first best epoch: the one the run kept
print("RESULT " + json.dumps({"test": {k: float(v) for k, v in r.test_metrics.items()}, "val_hr_at_10": val[best],
                             "epochs": best + 1}))
"""


def train(stage: str, workdir: Path, overrides: list[str]) -> dict:
    sets = [f"runs_dir={workdir / 'runs'}", f"export.dir={workdir / 'exports'}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", *overrides]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", RUN_ONE, CONFIGS[stage], *sets], cwd=REPO, env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.exit(f"{stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def three_stages(workdir: Path, seed: int, extra: list[str], epochs: dict | None = None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    for stage in ("gmf", "mlp", "neumf"):
        sets = [f"seed={seed}", *extra]
        if epochs:  # the final fit: the epochs chosen on validation, validation items trained on, last epoch kept
            sets += ["data.train_on_validation=true", "train.restore_best=false", f"train.epochs={epochs[stage]}"]
        if stage == "neumf":
            sets += [f"model.pretrain_{half}={workdir / 'exports' / name}" for half, name in EXPORTS.items()]
        out[stage] = train(stage, workdir, sets)
    return out


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--workdir", default="/tmp/reelml-ncf")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="applied to all three configs")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args()
    if not (REPO / "../shared/data/movielens_100k/u.data").exists():
        sys.exit("../shared/data/movielens_100k/u.data: not found (MovieLens is not shipped; put ../shared beside the clone)")

    results = {}
    for seed in args.seeds:
        root = Path(args.workdir).resolve() / f"seed{seed}"
        chosen = three_stages(root / "selection", seed, args.overrides)
        final = three_stages(root / "final", seed, args.overrides, {s: r["epochs"] for s, r in chosen.items()})
        results[seed] = {"selection": chosen, "final": final}
        for phase, runs in results[seed].items():
            cells = [f"{s} {r['test']['test_hr_at_10']:.4f} / {r['test']['test_ndcg_at_10']:.4f} ({r['epochs']} ep)"
                     for s, r in runs.items()]
            print(f"seed {seed} {phase:9s} " + ", ".join(cells)
                  + f"; TopPop {runs['neumf']['test']['test_toppop_hr_at_10']:.4f}", flush=True)

    print("\ntest HR@10 / NDCG@10, mean ± std over seeds " + " ".join(map(str, args.seeds)))
    for phase in ("selection", "final"):
        for stage in ("gmf", "mlp", "neumf"):
            hr = [results[s][phase][stage]["test"]["test_hr_at_10"] for s in args.seeds]
            ndcg = [results[s][phase][stage]["test"]["test_ndcg_at_10"] for s in args.seeds]
            print(f"{phase:9s} {stage:5s}: HR@10 {summary(hr)}, NDCG@10 {summary(ndcg)}")
        top = [results[s][phase]["neumf"]["test"]["test_toppop_hr_at_10"] for s in args.seeds]
        print(f"{phase:9s} TopPop: HR@10 {summary(top)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
