"""Hostile and careless configs: duplicate keys, alias bombs, booleans as numbers, lists as names,
non-finite numbers and tracking URIs MLflow cannot open. Each one exits 2 with one message naming
the key or the file, never a traceback, and fails before TensorFlow is imported."""

from __future__ import annotations

import subprocess

import pytest

from training.config import load_config, parse_override, tracking_uri_problem, validate, yaml_load
from training.config.yaml12 import MAX_YAML_NODES
from training.errors import ConfigError

from conftest import CONFIGS, run_cli


def _bomb(levels=10, width=10, indent="  "):
    """`levels` lists, each repeating the one before `width` times: width**levels values from a few hundred bytes."""
    lines = [f"{indent}- &a0 [{', '.join(['1'] * width)}]"]
    lines += [f"{indent}- &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _flow_bomb(levels=10, width=10):
    """The same bomb in one flow sequence, for `--set`."""
    items = [f"&a0 [{','.join(['1'] * width)}]"] + [f"&a{i} [{','.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{','.join(items)}]"


SMOKE = {task: CONFIGS / "smoke" / f"{task}.yaml" for task in ("frames", "recommender", "dialogue", "autoencoder")}

# Each case: (YAML text, or the task whose smoke config is used; extra CLI args; texts the one message must contain).
BAD = {
    # 6. Duplicate keys name the dotted key and both lines; the last one no longer wins silently.
    "duplicate top-level key": ("name: x\nseed: 1\nname: y\n", [], ["bad.yaml:3: key `name` appears twice (lines 1 and 3)"]),
    "duplicate nested key": ("name: x\ntrain:\n  epochs: 2\n  epochs: 3\n", [],
                             ["bad.yaml:4: key `train.epochs` appears twice (lines 3 and 4)"]),
    "duplicate section": ("name: x\ntask: dialogue\nsamples:\n  top_k: 1\nsamples:\n  max_tokens: 5\n", [],
                          ["bad.yaml:5: key `samples` appears twice (lines 3 and 5)"]),
    "duplicate key in a list of mappings": ("name: x\ntask: dialogue\nx:\n  - {a: 1}\n  - {b: 1, b: 2}\n", [],
                                            ["key `x.1.b` appears twice (line 5"]),
    "duplicate beside a merge key": ("name: x\ntask: recommender\nmodel:\n  <<: {factors: 4}\n  factors: 8\n  factors: 16\n",
                                     [], ["bad.yaml:6: key `model.factors` appears twice (lines 5 and 6)"]),
    "--set duplicate key": ("frames", ["--set", "model={filters: [8], filters: [16]}"],
                            ["--set model:1: key `model.filters` appears twice"]),
    # 7. Alias bombs stop before anything is built or printed.
    "alias bomb in a file": ("name: x\nmodel:\n  filters:\n" + _bomb(), [], ["key `model.filters`", "alias bomb"]),
    "alias bomb in --set": ("recommender", ["--set", f"data.top_k={_flow_bomb()}"], ["key `data.top_k`", "alias bomb"]),
    "alias that contains itself": ("name: x\nmodel:\n  filters: &f [8, *f]\n", [], ["key `model.filters`", "contains it"]),
    "nested too deep": ("name: x\nmodel:\n  filters: " + "[" * 150 + "]" * 150 + "\n", [], ["key `model.filters`", "levels deep"]),
    # 8. Booleans are not numbers (pydantic alone reads true as 1), across tasks, lists and unions.
    "--set bool for an int": ("frames", ["--set", "train.epochs=true"], ["`train.epochs`: got true: expected an integer"]),
    "bool in a list of ints": ("name: x\nmodel:\n  filters: [32, true]\n", [], ["`model.filters`", "not a boolean"]),
    "--set bool for an int or list": ("frames", ["--set", "model.convs_per_block=false"], ["`model.convs_per_block`: got false"]),
    "bool for the seed": ("name: x\nseed: false\n", [], ["`seed`: got false"]),
    "bool for an optional float": ("name: x\ntask: recommender\ndata:\n  min_rating: true\n", [], ["`data.min_rating`: got true"]),
    "--set bool in top_k": ("recommender", ["--set", "data.top_k=[10, true]"], ["`data.top_k`", "not a boolean"]),
    "bool for a temperature": ("name: x\ntask: dialogue\nsamples:\n  temperature: false\n", [], ["`samples.temperature`: got false"]),
    "--set bool for an optional int": ("dialogue", ["--set", "data.max_chars=true"], ["`data.max_chars`: got true"]),
    "bool for a percentile": ("name: x\ntask: autoencoder\nanomaly:\n  threshold_percentile: true\n", [],
                              ["`anomaly.threshold_percentile`: got true"]),
    "--set bool for code_size": ("autoencoder", ["--set", "model.code_size=true"], ["`model.code_size`: got true"]),
    # 9. A list or mapping where a name is expected.
    "--set task to a list": ("frames", ["--set", "task=[frames]"], ["key `task`: got ['frames']: expected one of"]),
    "task is a mapping": ("name: x\ntask: {a: 1}\n", [], ["key `task`: got {'a': 1}: expected one of"]),
    "base is a list": ("base: [other.yaml]\nname: x\n", [], ["key `base`: expected a path"]),
    "base is a mapping": ("base: {path: other.yaml}\nname: x\n", [], ["key `base`: expected a path"]),
    "base with a NUL byte": ('base: "a\\0b.yaml"\nname: x\n', [], ["key `base`: expected a path"]),
    "a list as a key": ("name: x\n? [a, b]\n: 1\n", [], ["bad.yaml:", "not valid YAML"]),
    # 10. Numbers are finite.
    "--set infinite warm-up": ("frames", ["--set", "train.warmup_epochs=.inf"], ["`train.warmup_epochs`: got inf", "finite"]),
    "--set infinite clipnorm": ("frames", ["--set", "train.clipnorm=.inf"], ["`train.clipnorm`", "finite"]),
    "nan dropout": ("name: x\ntask: dialogue\nmodel:\n  dropout: .nan\n", [], ["`model.dropout`: got nan", "finite"]),
    "-inf min_rating": ("name: x\ntask: recommender\ndata:\n  min_rating: -.inf\n", [], ["`data.min_rating`", "finite"]),
    "--set nan recency weight": ("recommender", ["--set", "data.recency_weight=.NaN"], ["`data.recency_weight`", "finite"]),
    "inf noise": ("name: x\ntask: autoencoder\nmodel:\n  noise_stddev: .inf\n", [], ["`model.noise_stddev`", "finite"]),
    # 11. Tracking URIs MLflow cannot open.
    "--set ftp tracking uri": ("frames", ["--set", "tracking.uri=ftp://host/x"],
                               ["key `tracking.uri`: scheme `ftp:`", "sqlite:", "postgresql+psycopg2:", "http:", "databricks"]),
    "unknown tracking scheme": ("name: x\ntracking:\n  uri: foo:bar\n", [], ["key `tracking.uri`: scheme `foo:`"]),
    "postgres is not postgresql": ("name: x\ntask: dialogue\ntracking:\n  uri: postgres://u:secret@db/mlflow\n", [],
                                   ["key `tracking.uri`: scheme `postgres:`"]),
}


def _run(case, tmp_path, timeout=60):  # a config error takes about a second
    text, extra, _ = BAD[case]
    if text in SMOKE:
        path = SMOKE[text]
    else:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
    return run_cli("train", path, *extra, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"},
                   timeout=timeout)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_naming_the_key(case, tmp_path):
    result = _run(case, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().startswith("reelml train: error:"), result.stderr
    for expected in BAD[case][2]:
        assert expected in result.stderr, result.stderr
    assert "secret" not in result.stderr, "a rejected URI's credentials must not be echoed"
    assert len(result.stderr.strip().splitlines()) == 1 and len(result.stderr) < 600, result.stderr


@pytest.mark.parametrize("case", ["alias bomb in a file", "alias bomb in --set"])
def test_alias_bomb_fails_fast_with_a_short_message(case, tmp_path):
    # 10**10 values if expanded; the subprocess timeout (not a timed assertion) catches a hang.
    try:
        result = _run(case, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("an alias bomb must be refused before it is expanded")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr) < 400, result.stderr


# In-process checks: what must still work, and the parts of the messages the CLI cases do not pin down.


def test_alias_bomb_is_refused_before_it_expands():
    with pytest.raises(ConfigError, match=f"bomb.yaml:\\d+: key `filters`: aliases expand .* more than {MAX_YAML_NODES:,} values"):
        yaml_load("filters:\n" + _bomb(levels=8), "bomb.yaml")


def test_merge_keys_may_still_override():
    text = "a: &x {p: 1, q: 2}\nb: &y {q: 5, r: 3}\nc:\n  <<: *x\n  q: 3\nd:\n  <<: [*x, *y]\n  <<: *y\n"
    data = yaml_load(text)
    assert data["c"] == {"p": 1, "q": 3} and data["d"] == {"p": 1, "q": 2, "r": 3}


def test_aliases_that_repeat_a_value_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: x\nmodel:\n  filters: &f [8, 16]\n  dense_units: *f\n")
    cfg = load_config(path)
    assert cfg.model.filters == [8, 16] == cfg.model.dense_units


def test_duplicate_key_in_set_value_names_the_full_key():
    with pytest.raises(ConfigError, match=r"key `samples\.prompts` appears twice \(line 1, columns 2 and 16\)"):
        parse_override("samples={prompts: [a], prompts: [b]}")


def test_numbers_still_accept_numbers():
    cfg = validate({"name": "x", "train": {"learning_rate": 1, "epochs": 5, "warmup_epochs": 0, "clipnorm": 2},
                    "model": {"convs_per_block": [1, 2, 1, 2], "dropout": 0}})
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float) and cfg.train.epochs == 5
    assert cfg.model.convs_per_block == [1, 2, 1, 2]
    rec = validate({"name": "x", "task": "recommender", "data": {"min_rating": 4, "top_k": [5, 10]}})
    assert rec.data.min_rating == 4.0 and rec.data.top_k == [5, 10]
    # Booleans where booleans belong are untouched.
    assert validate({"name": "x", "tracking": {"enabled": False}}).tracking.enabled is False


@pytest.mark.parametrize("task,key", [("frames", "data.image_size"), ("frames", "train.momentum"),
                                      ("recommender", "model.pretrain_alpha"), ("dialogue", "samples.top_k"),
                                      ("dialogue", "model.units"), ("autoencoder", "data.random_zoom")])
def test_booleans_are_refused_for_more_numbers(task, key):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"`{key}`: got \\[?true\\]?: expected (an integer|a number), not a boolean"):
        validate({"name": "x", "task": task, section: {name: [True] if name == "units" else True}})


def test_every_number_in_the_schema_refuses_booleans_and_infinity():
    """Walks every int and float key of every task's schema (nested sections too)."""
    import typing

    from pydantic import BaseModel

    from training.config import RUN_CONFIGS

    def numbers(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
            if isinstance(args[0], type) and issubclass(args[0], BaseModel):
                yield from numbers(args[0], f"{prefix}{name}.")
            elif args[0] in (int, float):
                yield f"{prefix}{name}", args[0]

    checked = 0
    for task, run in RUN_CONFIGS.items():
        for key, kind in numbers(run):
            path = key.split(".")
            for bad in (True, float("inf")) if kind is float else (True,):
                data = {"name": "x", "task": task}
                node = data
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = bad
                with pytest.raises(ConfigError, match=f"key `{key}`"):
                    validate(data)
            checked += 1
    assert checked > 50


def test_long_values_are_cut_in_messages():
    with pytest.raises(ConfigError) as e:
        validate({"name": "x", "data": {"tfds_name": list(range(10_000))}})
    assert len(str(e.value)) < 200 and "..." in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate({"name": "x", "task": "x" * 10_000})
    assert len(str(e.value)) < 250 and "..." in str(e.value)


def test_not_a_mapping_is_refused_by_validate():
    with pytest.raises(ConfigError, match="expected a mapping"):
        validate(["name", "x"])


@pytest.mark.parametrize("uri", ["mlruns", "./runs/ml:store", "file:///tmp/mlruns", "sqlite:///mlflow.db",
                                 "postgresql://u:p@db/mlflow", "postgresql+psycopg2://u:p@db/mlflow", "mysql+pymysql://db/m",
                                 "mssql+pyodbc://db/m", "http://localhost:5000", "HTTPS://mlflow.example.com",
                                 "databricks", "databricks://profile", "databricks-uc", "uc:http://localhost:8080"])
def test_tracking_uris_mlflow_opens_are_accepted(uri):
    assert tracking_uri_problem(uri) is None
    assert validate({"name": "x", "tracking": {"uri": uri}}).tracking.uri == uri


@pytest.mark.parametrize("uri", ["ftp://host/x", "foo:bar", "s3://bucket/x", "postgres://db/m", "sqlitex:///m.db",
                                 "postgresql+a+b://db/m"])
def test_tracking_uris_mlflow_cannot_open_are_refused(uri):
    with pytest.raises(ConfigError, match="key `tracking.uri`: scheme"):
        validate({"name": "x", "tracking": {"uri": uri}})
