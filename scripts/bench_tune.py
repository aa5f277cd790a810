"""What a sweep of `configs/tune/<family>.yaml` finds against the shipped config, on validation, then tested once.

    python scripts/bench_tune.py recommender [--trials 12] [--workdir bench-tune]

Runs `reelml tune` with the family's space file on its config over our data (trial 0 is the shipped
config's own values at the sweep's schedule: the default to beat), then `reelml train` of the sweep's
`best.yaml`, which measures the test split for the first and only time. Prints one Markdown row:
trials (complete / pruned / failed), the default's and the best trial's validation metric, the best
config's test metrics, the sweep's wall time and the best run's. Nothing here is chosen on test data.

Everything is written under --workdir (its own MLflow store and run folders); a re-run with the same
workdir continues the study (pass --fresh to start over).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAMILIES = {  # family: (config, test metrics to report)
    "recommender": ("configs/recommender_ml100k_gmf.yaml", ("test_hr_at_10", "test_ndcg_at_10")),
    "frames": ("configs/frames_intel.yaml", ("test_accuracy",)),
    "dialogue": ("configs/dialogue.yaml", ()),  # no test split: the sweep's validation is the whole story
    "autoencoder": ("configs/autoencoder_intel.yaml", ("test_reconstruction_mse", "test_loss")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=FAMILIES)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--workdir", default="bench-tune")
    parser.add_argument("--fresh", action="store_true", help="delete the family's earlier study and runs first")
    args = parser.parse_args()

    config, test_metrics = FAMILIES[args.family]
    workdir = Path(args.workdir).resolve() / args.family
    if args.fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    # The configs read ../shared/data relative to the repository: run from it, with everything written to workdir.
    common = ["--set", f"runs_dir={workdir / 'runs'}", "--set", f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
              "--set", f"export.dir={workdir / 'exports'}"]
    reelml = [sys.executable, "-m", "training.cli"]
    space = f"configs/tune/{args.family}.yaml"

    sweep = subprocess.run([*reelml, "tune", config, "--space", space, "--trials", str(args.trials), *common],
                           cwd=REPO, capture_output=True, text=True)
    (workdir / "tune.log").write_text(sweep.stdout + sweep.stderr)
    if sweep.returncode != 0:
        print(sweep.stdout[-3000:], sweep.stderr[-3000:], file=sys.stderr)
        return sweep.returncode
    best_yaml = re.search(r"train it and measure test once: reelml train (\S+)", sweep.stdout).group(1)

    started = time.monotonic()
    best = subprocess.run([*reelml, "train", best_yaml], cwd=REPO, capture_output=True, text=True)
    best_seconds = time.monotonic() - started
    (workdir / "best.log").write_text(best.stdout + best.stderr)
    if best.returncode != 0:
        print(best.stdout[-3000:], best.stderr[-3000:], file=sys.stderr)
        return best.returncode

    import optuna

    name = re.search(r"Study `([^`]+)`", sweep.stdout).group(1)
    journal = workdir / "runs" / name / "tune" / "journal.log"
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    trials = [t for t in study.get_trials() if not t.user_attrs.get("reelml.surplus")]
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    default = next((t for t in trials if t.user_attrs.get("reelml.config_values")), None)
    finals = dict(re.findall(r"^(test_[a-z0-9_]+): ([-0-9.e]+)$", best.stdout, re.M))
    metric = re.search(r"Best: trial \d+, (\S+)", sweep.stdout).group(1)
    tested = ", ".join(f"{k} {float(finals[k]):.4f}" for k in test_metrics if k in finals) or "no test split"
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    sweep_seconds = (max(ends) - min(starts)).total_seconds()  # the study's own clock: a continued sweep counts whole
    print(f"| {args.family} | {config} | {states['COMPLETE']} / {states['PRUNED']} / {states['FAIL']} | {metric} | "
          f"{default.value if default and default.value is not None else float('nan'):.4f} (trial "
          f"{default.number if default else '-'}) | {study.best_value:.4f} (trial {study.best_trial.number}) | "
          f"{tested} | {sweep_seconds / 60:.1f} min | {best_seconds / 60:.1f} min |")
    print("best:", ", ".join(f"{k}={v}" for k, v in study.best_trial.params.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
