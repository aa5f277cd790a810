"""`reelml train | tune | evaluate | export | predict | promote`.

User errors (a bad config, path, file or ID) end in one readable message on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.errors import Preempted, UserError

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as if the signal had ended the process


def _import_tensorflow_quietly():
    """Imports TensorFlow without its C++ start-up chatter, which hides the messages that matter.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines absl prints before it is
    initialised, so stderr is muted for the import itself. Set
    TF_CPP_MIN_LOG_LEVEL yourself (0 shows everything) to keep its messages.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow  # noqa: F401
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _config_args(p):
    p.add_argument("config", help="YAML run config, e.g. configs/frames.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")


def add_output_arguments(p) -> None:
    """The flags `reelml predict` takes for every task."""
    p.add_argument("-h", "--help", action="store_true", help="show the flags of EXPORT_DIR's task and exit")
    p.add_argument("--output", "-o", help="write results here (.csv, .jsonl; shots and QC events also .edl, .otio); "
                   "default: CSV on stdout")
    p.add_argument("--format", choices=["csv", "jsonl", "edl", "otio"],
                   help="output format (default: from --output's extension, else csv)")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reelml", description="Train, track, export and run reelml models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config (resumes an interrupted run)")
    _config_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--fresh", action="store_true", help="start over even if an unfinished run of this config exists")

    p = sub.add_parser("tune", help="search a config's hyperparameters with Optuna: every trial an MLflow child run, "
                       "resumable, parallel over processes or cluster tasks")
    _config_args(p)
    p.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="what each trial draws: dotted config keys with ranges or choices (configs/tune/ has one per family)")
    p.add_argument("--trials", type=_positive(int), default=20, help="finished trials the study ends with, all tuners "
                   "together (default 20); a re-run continues up to it")
    p.add_argument("--storage", help="the study's storage: a journal file (default runs/<name>/tune/journal.log; put it on "
                   "shared storage for a cluster) or an RDB URL, e.g. sqlite:///tune.db")
    p.add_argument("--study", help="the study's name in the storage (default: the config's name)")
    p.add_argument("--timeout", type=_positive(float), metavar="SECONDS", help="start no trial after this long")
    p.add_argument("--jobs", type=_positive(int), default=1, help="tuner processes on this machine (default 1)")
    p.add_argument("--dry-run", action="store_true", help="check the config and space, print the plan and exit")

    p = sub.add_parser("evaluate", help="evaluate a run's checkpoint on its validation and test data")
    _config_args(p)

    p = sub.add_parser("export", help="export a run's checkpoint as a new SavedModel version")
    _config_args(p)
    p.add_argument("--no-verify", action="store_true", help="skip the reload check in a fresh process")

    # The flags after EXPORT_DIR are those of the export's task (training/tasks/<task>/predict.py), read by
    # training.predict once it knows the task: `reelml predict EXPORT_DIR --help` lists them.
    p = sub.add_parser("predict", add_help=False, help="run an export: frames over images, folders or videos; "
                       "recommendations for users; dialogue; frame QC (EXPORT_DIR --help: its task's flags)")
    add_output_arguments(p)
    p.add_argument("export_dir", nargs="?", help="exports/<name> (newest version), exports/<name>/<version>, "
                   "models:/<name>@<alias> or models:/<name>/<version> (MLflow's registry)")

    p = sub.add_parser("promote", help="point an MLflow registry alias (default `champion`) at a registered model version")
    p.add_argument("name", help="the registered model: the config's `name`")
    p.add_argument("--version", help="the version to promote (default: the newest)")
    p.add_argument("--alias", default="champion", help="the alias to set (default: champion)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "predict":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return _run(args, rest)
    except UserError as e:
        print(f"reelml {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as e:  # SIGTERM from a scheduler: the checkpoint is saved; a requeued job resumes it
        print(f"reelml {args.command}: {e}; run the same command again to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print(f"reelml {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args, rest) -> int:
    if args.command == "predict":
        from training.predict import predict

        return predict(args, rest, _import_tensorflow_quietly)
    if args.command == "promote":
        from training import mlflow_model, tracking

        uri = tracking.resolve_uri(args.tracking_uri)
        version = mlflow_model.promote(args.name, args.version, args.alias, uri)
        print(f"models:/{args.name}@{args.alias} -> version {version} (in {uri})")
        return 0

    if args.command == "tune":
        from training.tune import tune

        return tune(args, _import_tensorflow_quietly)  # which imports TensorFlow once the space file is checked

    from training.config import load_config

    cfg = load_config(args.config, args.overrides)  # every config error surfaces here, before TF loads
    if args.command == "train" and args.dry_run:
        print(cfg.to_yaml(), end="")
        return 0
    _import_tensorflow_quietly()
    if args.command == "train":
        from training.train import train

        result = train(cfg, fresh=args.fresh)
        _print_summary(cfg, result)
        return 0
    from training import train as train_module

    if args.command == "evaluate":
        metrics = train_module.evaluate(cfg)
        for k, v in metrics.items():
            print(f"{k}: {v:.4f}")
        return 0
    if args.command == "export":
        if args.no_verify:
            cfg.export.verify = False
        path = train_module.reexport(cfg)
        print(f"Exported {path}")
        return 0
    raise AssertionError(args.command)


def _print_summary(cfg, result):
    import shlex

    print()
    for k, v in result.test_metrics.items():
        print(f"{k}: {v:.4f}")
    if result.run_id:
        print(f"MLflow run: {result.run_id} in {result.tracking_uri}")
        print(f"  browse: {result.run_page}")
    print(f"Run folder: {result.run_dir} (checkpoints, TensorBoard logs, resolved config)")
    if result.export_dir:
        export_dir = Path(result.export_dir)
        print(f"Export: {export_dir}")
        from training.tasks import TASKS

        print(f"  predict: reelml predict {shlex.quote(str(export_dir.parent))} {TASKS[cfg.task].predict_hint(cfg)}")
        # Bound to this machine only: TF Serving has no authentication; publish it wider on purpose, not by default.
        volume = shlex.quote(f"{export_dir.parent.resolve()}:/models/{cfg.name}")
        print(f"  serve:   docker run -p 127.0.0.1:8501:8501 -v {volume} "
              f"-e MODEL_NAME={shlex.quote(cfg.name)} tensorflow/serving")


if __name__ == "__main__":
    sys.exit(main())
