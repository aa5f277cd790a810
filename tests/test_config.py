"""The config contract: strict, typed, round-trippable, and every mistake named in one message."""

from __future__ import annotations

import pytest
import yaml

from training.config import load_config, validate, yaml_load
from training.errors import ConfigError

from conftest import CONFIGS, run_cli


RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "tune")  # configs/tune/: space files
SPACE_FILES = sorted((CONFIGS / "tune").glob("*.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(again) == cfg
    assert validate(yaml.safe_load(cfg.to_yaml())) == cfg


def test_every_shipped_config_opens_with_its_command():
    for path in RUN_CONFIGS:
        head = path.read_text().split("\n\n")[0]
        assert head.startswith("#") and "reelml train" in head, f"{path} must open with a comment giving its command"


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_every_shipped_space_file_opens_with_its_command_and_fits_its_config(path):
    import re
    import shlex

    from training.tune.space import load_space

    head = path.read_text().split("\n\n")[0]
    command = re.search(r"^#   (reelml tune .*?)$((?:\n#\s{5,}.*$)*)", head, re.M)
    assert command, f"{path} must open with a comment giving its `reelml tune` command"
    argv = shlex.split((command.group(1) + command.group(2).replace("#", " ")).replace("\\", " "))
    config, overrides = argv[2], [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert argv[argv.index("--space") + 1] == f"configs/tune/{path.name}"
    assert "FOUND" not in head  # what it found on our data is written down
    space = load_space(path, CONFIGS.parent / config, overrides)  # every key, bound and choice fits the config
    assert space.params


def test_yaml_1_2_scalars():
    assert yaml_load("a: 1e-3\nb: no\nc: off\nd: true\ne: 5") == {"a": 0.001, "b": "no", "c": "off", "d": True, "e": 5}


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    cfg = load_config(CONFIGS / "frames.yaml", ["train.learning_rate=3e-4", "train.epochs=7", "model.filters=[8, 16]",
                                                "model.convs_per_block=2"])
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.train.epochs == 7 and cfg.model.filters == [8, 16] and cfg.model.convs_per_block == 2


def test_base_is_resolved_relative_to_the_file():
    smoke = load_config(CONFIGS / "smoke" / "frames.yaml")
    base = load_config(CONFIGS / "frames.yaml")
    assert smoke.name == "frames-smoke" and smoke.train.optimizer == base.train.optimizer


def test_flat_params_name_every_key():
    flat = validate({"name": "x"}).flat()
    assert flat["train.learning_rate"] == pytest.approx(1e-3) and flat["data.source"] == "sample"


def test_fingerprint_tracks_the_config():
    a, b = validate({"name": "x"}), validate({"name": "x", "train": {"epochs": 3}})
    assert a.fingerprint() == validate({"name": "x"}).fingerprint() != b.fingerprint()


# Each case: (YAML text or None for the base config, extra CLI args, text the one message must contain).
BAD = {
    "unknown top-level key": ("name: x\nnmae: y\n", [], "`nmae` does not exist"),
    "unknown nested key": ("name: x\ntrain:\n  lerning_rate: 0.1\n", [], "`train.lerning_rate` does not exist"),
    "string for an int": ("name: x\ntrain:\n  epochs: ten\n", [], "`train.epochs`"),
    "float for an int": ("name: x\ntrain:\n  epochs: 2.5\n", [], "`train.epochs`"),
    "negative learning rate": ("name: x\ntrain:\n  learning_rate: -1e-3\n", [], "`train.learning_rate`"),
    "fraction out of range": ("name: x\ndata:\n  validation_split: 1.5\n", [], "`data.validation_split`"),
    "unknown task": ("name: x\ntask: poetry\n", [], "`task`: got 'poetry': expected one of 'frames'"),
    "unknown choice": ("name: x\ntrain:\n  optimizer: rmsprop2\n", [], "`train.optimizer`: got 'rmsprop2'"),
    "YAML 1.1 `no` is not a choice": ("name: x\ndata:\n  on_bad_file: no\n", [], "`data.on_bad_file`: got 'no'"),
    "not a boolean": ("name: x\ntracking:\n  enabled: maybe\n", [], "`tracking.enabled`"),
    "missing required key": ("seed: 3\n", [], "`name` is required"),
    "name with spaces": ("name: my run\n", [], "`name`"),
    "empty filter list": ("name: x\nmodel:\n  filters: []\n", [], "`model.filters`"),
    "one entry per block": ("name: x\nmodel:\n  filters: [8, 16]\n  convs_per_block: [1, 2, 3]\n", [], "`model.convs_per_block`: expected one entry per block"),
    "section given a value": ("name: x\ntrain: 5\n", [], "`train`"),
    "rule across keys": ("name: x\ndata:\n  source: folders\n", [], "`data.train_dir` is required when `data.source` is `folders`"),
    "invalid YAML": ("name: x\ntrain: [1, 2\n", [], "not valid YAML"),
    "list at the top": ("- name\n- x\n", [], "expected a mapping"),
    "missing base file": ("base: nowhere.yaml\nname: x\n", [], "nowhere.yaml: config file not found"),
    "--set without =": (None, ["--set", "train.epochs"], "expected dotted.key=value"),
    "--set unknown key": (None, ["--set", "train.epoch=3"], "`train.epoch` does not exist"),
    "--set malformed key": (None, ["--set", "train..epochs=3"], "is not a dotted key"),
    "--set bad value": (None, ["--set", "data.batch_size=0"], "`data.batch_size`: got 0"),
    "--set into a value": (None, ["--set", "seed.x=1"], "`seed` is a value, not a section"),
    "missing data folder": (None, ["--set", "data.source=folders", "--set", "data.train_dir=no/such/dir"], "data.train_dir `no/such/dir`: folder not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_with_one_message(case, tmp_path):
    text, extra, expected = BAD[case]
    if text is None:
        path = CONFIGS / "smoke" / "frames.yaml"
    else:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
    result = run_cli("train", path, *extra, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr
    assert result.stderr.strip().startswith("reelml train: error:"), result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run_cli("train", tmp_path / "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "config file not found" in result.stderr and "Traceback" not in result.stderr


def test_config_that_is_a_directory_exits_2(tmp_path):
    result = run_cli("train", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "found a directory" in result.stderr


def test_base_loop_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")


def test_dry_run_prints_the_resolved_config(tmp_path):
    result = run_cli("train", CONFIGS / "frames.yaml", "--dry-run", "--set", "train.epochs=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["epochs"] == 4 and resolved["name"] == "frames"
    assert validate(resolved) == load_config(CONFIGS / "frames.yaml", ["train.epochs=4"])
    assert not (tmp_path / "runs").exists(), "a dry run must not write anything"


def test_config_reference_is_generated_from_the_schema():
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_config_docs.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
