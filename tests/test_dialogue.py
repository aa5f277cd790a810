"""The dialogue model: reading scripts, tokens, the model's contract, generation inside the export, predict."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from models.dialogue_rnn import advance, build_dialogue_rnn, initial_states, next_logits
from training import export as export_lib
from training.cli import main as cli_main
from training.config import load_config
from training.errors import ConfigError, UserError
from training.tasks.dialogue import TASK
from training.tasks.dialogue.data import load_data, train_dataset
from training.tasks.dialogue.text import read_text
from training.tasks.dialogue.tokens import detokenize, tokenize
from training.train import train

from conftest import CONFIGS, WITHOUT_REELML

SMOKE = CONFIGS / "smoke" / "dialogue.yaml"


def _cfg(workdir, *overrides, config=SMOKE):
    return load_config(config, [f"tracking.uri=sqlite:///{workdir}/mlflow.db", *overrides])


def _files(workdir, path, *extra):
    return _cfg(workdir, "data.source=files", f"data.path={path}", "data.max_chars=null", "data.seq_len=8",
                "data.batch_size=4", *extra)


# --------------------------------------------------------------------------- tokens and vocabulary


def test_char_tokens_round_trip_any_text():
    text = "ROMEO:\nBut, soft! what light — café 中文\ttab  two spaces\n\n"
    tokens = tokenize([text], "char")
    assert tokens.flat_values.shape[0] == len(text)
    assert detokenize(tokens.to_tensor(""), "char").numpy()[0].decode() == text


def test_word_tokens_keep_punctuation_and_line_breaks_and_round_trip():
    text = "KING RICHARD:\nWhat say'st thou, man? (aside) I'll go.\n"
    tokens = [t.decode() for t in tokenize([text], "word").flat_values.numpy()]
    assert tokens == ["KING", "RICHARD", ":", "\n", "What", "say'st", "thou", ",", "man", "?", "(", "aside", ")", "I'll",
                      "go", ".", "\n"]
    again = detokenize(tf.constant([tokens]), "word").numpy()[0].decode()
    assert again == "KING RICHARD:\nWhat say'st thou, man? (aside) I'll go.\n"
    assert [t.decode() for t in tokenize([again], "word").flat_values.numpy()] == tokens


def test_vocabulary_comes_from_the_training_text_only(workdir):
    # 90% of the text uses a-e; the last 10% brings X, Y and a new word: none may reach the vocabulary.
    train_part = "abcde abc\nbad cab\n" * 500
    text = train_part + "XYXY zzz new\n" * (len(train_part) // 13 // 9)
    (workdir / "script.txt").write_text(text)
    data = load_data(_files(workdir, workdir / "script.txt"), workdir)
    assert set(data.vocabulary) == set("abcde \n")
    assert data.counts["train_chars"] + data.counts["validation_chars"] == len(text)
    cut = data.counts["train_tokens"]
    assert cut == data.counts["train_chars"] <= len(train_part) and text[cut - 1] == "\n"  # the split falls on a line break
    assert data.counts["train_unknown_tokens"] == 0
    assert data.counts["validation_unknown_tokens"] == sum(c not in "abcde \n" for c in text[len(train_part):])
    words = load_data(_files(workdir, workdir / "script.txt", "data.level=word", "data.seq_len=4"), workdir)
    assert {"XYXY", "zzz", "new"}.isdisjoint(words.vocabulary) and "abcde" in words.vocabulary


def test_rare_tokens_become_the_unknown_token(workdir):
    (workdir / "s.txt").write_text("the cat sat on the mat\n" * 150 + "zebra\n" + "the cat sat on the mat\n" * 150)
    data = load_data(_files(workdir, workdir / "s.txt", "data.level=word", "data.min_count=2",
                            "data.seq_len=4", "data.validation_split=0.05"), workdir)
    assert "zebra" not in data.vocabulary and data.counts["train_unknown_tokens"] == 1
    capped = load_data(_files(workdir, workdir / "s.txt", "data.max_vocab=4"), workdir)
    assert len(capped.vocabulary) == 3 and capped.vocabulary[0] == " "  # most frequent first


def test_training_windows_are_next_tokens_and_change_every_epoch():
    from training.epochs import set_epoch

    ids = np.arange(1, 1001, dtype=np.int32)
    ds = train_dataset(ids, seq_len=10, batch_size=8, seed=3)
    firsts = []
    for epoch in (0, 1, 0):
        set_epoch(epoch)
        x, y = (np.concatenate(a) for a in zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
        np.testing.assert_array_equal(y, x + 1)
        assert len(x) == (1000 // 10 - 1) // 8 * 8
        firsts.append(x[:, 0])
    assert not np.array_equal(firsts[0], firsts[1]) and np.array_equal(firsts[0], firsts[2])
    set_epoch(0)


def test_stateful_streams_continue_row_by_row_and_reset_at_each_epochs_start():
    from training.epochs import set_epoch
    from training.tasks.dialogue.data import stream_dataset

    ids = np.arange(1, 1001, dtype=np.int32)
    ds, steps = stream_dataset(ids, seq_len=10, rows=4, seed=3)
    assert steps == (1000 - 1 - 10) // 4 // 10
    firsts = []
    for epoch in (0, 1, 0):
        set_epoch(epoch)
        batches = [(x["tokens"].numpy(), x["reset"].numpy(), y.numpy()) for x, y in ds]
        assert len(batches) == steps
        for j, (tokens, reset, targets) in enumerate(batches):
            np.testing.assert_array_equal(targets, tokens + 1)
            assert reset.tolist() == [j == 0] * 4
            if j:  # each row goes on where the same row of the batch before stopped
                np.testing.assert_array_equal(tokens[:, 0], batches[j - 1][0][:, -1] + 1)
        streams = np.stack([b[0] for b in batches], 1).reshape(4, -1)
        assert len(np.unique(streams)) == streams.size  # no token read twice in an epoch
        firsts.append(batches[0][0][:, 0])
    assert not np.array_equal(firsts[0], firsts[1]) and np.array_equal(firsts[0], firsts[2])  # a new offset per epoch
    set_epoch(0)
    validation, val_steps = stream_dataset(ids[:203], seq_len=10, rows=4, seed=None)
    first = next(iter(validation))[0]
    assert val_steps == 5 and first["tokens"][:, 0].numpy().tolist() == [1, 51, 101, 151]  # from the start, no offset


@pytest.mark.parametrize("cell", ["simple_rnn", "gru", "lstm"])
def test_a_stateful_model_reads_a_text_in_windows_as_the_plain_model_reads_it_whole(cell):
    from training.tasks.dialogue.model import Streams

    lm = build_dialogue_rnn(20, cell=cell, units=[8, 6], embedding_dim=4, seed=1)
    streams = Streams(lm, rows=3)
    x = np.random.default_rng(0).integers(0, 20, (3, 12)).astype(np.int32)
    whole = np.asarray(lm(x))
    windows = [np.asarray(streams({"tokens": x[:, t:t + 4], "reset": np.full(3, t == 0)})) for t in (0, 4, 8)]
    np.testing.assert_allclose(np.concatenate(windows, 1), whole, rtol=1e-5, atol=1e-6)
    again = np.asarray(streams({"tokens": x[:, :4], "reset": np.ones(3, bool)}))  # reset: from a zero state again
    np.testing.assert_allclose(again, whole[:, :4], rtol=1e-5, atol=1e-6)
    # The same weights, once; the per-replica states are neither weights nor checkpointed.
    assert [v.path for v in streams.variables] == [v.path for v in lm.variables]
    assert len(streams.trainable_variables) == len(lm.trainable_variables)


def _final_weights(workdir):
    """Every float in the last checkpoint: the weights (the wrapper puts them under `optimizer/`), Adam's moments."""
    reader = tf.train.load_checkpoint(str(workdir / "runs" / "dialogue-smoke" / "checkpoints" / "last"))
    dtypes = reader.get_variable_to_dtype_map()
    return {k: reader.get_tensor(k) for k in dtypes if dtypes[k].is_floating and not k.startswith("metrics/")}


def _epoch_losses(workdir):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
            for key in ("loss", "val_loss")}


def test_a_stateful_run_killed_mid_training_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    """SIGKILL (no warning, no checkpoint of its own) during epoch 3: the same command goes on from epoch 2's
    checkpoint, every stream starting that epoch from a zero state as it would have, and ends where a run that
    was never stopped ends."""
    import os
    import signal

    command = [sys.executable, "-m", "training.cli", "train", str(SMOKE), "--set", "data.stateful=true",
               "--set", "train.epochs=4", "--set", "train.max_steps_per_epoch=6", "--set", "samples.prompts=[]"]
    no_export = ["--set", "export.enabled=false"]  # the runs compared by their checkpoints
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
    done = subprocess.run(command, cwd=whole, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The export holds the plain model (verified without reelml); the run reports both validation losses.
    assert re.search(r"^val_window_loss: \d", done.stdout, re.M), done.stdout[-2000:]
    # The report's stream reading of the validation text is the one the run validated with, on its kept epoch.
    stream = float(re.search(r"^val_stream_loss: ([\d.]+)", done.stdout, re.M).group(1))
    assert stream == pytest.approx(min(_epoch_losses(whole)["val_loss"]), abs=2e-4)  # printed to 4 places
    assert export_lib.versions(whole / "exports" / "dialogue-smoke") == [1]

    proc = subprocess.Popen(command + no_export, cwd=killed, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    for line in iter(proc.stdout.readline, ""):
        seen.append(line)
        if line.startswith("Epoch 3/4"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    resumed = subprocess.run(command + no_export, cwd=killed, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout

    reference, weights = _final_weights(whole), _final_weights(killed)
    assert reference.keys() == weights.keys() and reference
    for key, value in reference.items():
        np.testing.assert_allclose(weights[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    losses, reference_losses = _epoch_losses(killed), _epoch_losses(whole)
    for key in ("loss", "val_loss"):  # one value per epoch, none missing or twice, the same as never stopped
        assert losses[key] == pytest.approx(reference_losses[key], rel=1e-5), key


# --------------------------------------------------------------------------- input formats


def test_folder_of_text_files_is_read_in_name_order(workdir):
    (workdir / "scripts").mkdir()
    (workdir / "scripts" / "b.txt").write_text("SECOND:\nLater.\n")
    (workdir / "scripts" / "a.txt").write_text("FIRST:\nHello.\r\n")
    (workdir / "scripts" / "notes.bin").write_bytes(b"\x00\x01")
    (workdir / "scripts" / "movie_titles_metadata.txt").write_text("m0 +++$+++ 10 things i hate about you +++$+++ 1999\n")
    cfg = _files(workdir, workdir / "scripts")
    assert read_text(cfg.data)[0] == "FIRST:\nHello.\n\n\nSECOND:\nLater.\n"


SCREENPLAY = """\
INT. KITCHEN - NIGHT

Rain on the window. ANNA pours tea.

                    ANNA
          You came back.

                    BEN (V.O.)
               (quietly)
          I never left. Not
          really.

                                        CUT TO:
"""


def test_screenplays_become_name_colon_lines(workdir):
    (workdir / "scene.txt").write_text(SCREENPLAY)
    cfg = _files(workdir, workdir / "scene.txt")
    assert read_text(cfg.data)[0] == (
        "INT. KITCHEN - NIGHT\nRain on the window. ANNA pours tea.\nANNA: You came back.\n"
        "BEN: (quietly) I never left. Not really.\nCUT TO:\n")
    dialogue_only = _files(workdir, workdir / "scene.txt", "data.stage_directions=drop")
    assert read_text(dialogue_only.data)[0] == "ANNA: You came back.\nBEN: I never left. Not really.\n"


def test_play_script_stage_directions_can_be_dropped(workdir):
    (workdir / "play.txt").write_text("HAMLET:\n[Aside] A little more than kin. (He turns)\n")
    cfg = _files(workdir, workdir / "play.txt", "data.stage_directions=drop")
    assert read_text(cfg.data)[0] == "HAMLET:\nA little more than kin.\n"


def test_cornell_movie_lines_are_latin_1_and_put_back_in_order(workdir):
    sep = " +++$+++ "
    rows = [f"L3{sep}u1{sep}m1{sep}JOE{sep}Fine.", f"L2{sep}u0{sep}m0{sep}BIANCA{sep}Caf\xe9?",
            f"L10{sep}u1{sep}m0{sep}CAMERON{sep}Not yet.", f"L1{sep}u0{sep}m0{sep}BIANCA{sep}They do not!"]
    (workdir / "movie_lines.txt").write_bytes("\n".join(rows).encode("latin-1"))
    cfg = _files(workdir, workdir / "movie_lines.txt")
    assert read_text(cfg.data)[0] == "BIANCA: They do not!\nBIANCA: Café?\nCAMERON: Not yet.\n\nJOE: Fine.\n"
    (workdir / "movie_lines.txt").write_bytes(b"L1 +++$+++ u0 +++$+++ BIANCA +++$+++ They do not!\n")
    with pytest.raises(UserError, match=r"movie_lines.txt: line 1: malformed row, expected 5 fields"):
        read_text(cfg.data)


def test_tfds_tiny_shakespeare_joins_its_splits_in_order(workdir):
    import tensorflow_datasets as tfds

    cfg = _cfg(workdir, "data.source=tfds", "data.tfds_name=tiny_shakespeare", "data.tfds_download=false")
    with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
        text, origin = read_text(cfg.data)
        builder = tfds.builder("tiny_shakespeare")
        parts = [next(iter(builder.as_dataset(split=s)))["text"].numpy().decode() for s in ("train", "validation", "test")]
    assert origin == "tfds:tiny_shakespeare" and text == "".join(parts)


@pytest.mark.parametrize("setup, overrides, message", [
    (lambda d: d.mkdir(), [], r"no text files in the folder"),
    (lambda d: d.write_bytes(b"caf\xe9\n"), [], r"not utf-8 text .* set data.encoding"),
    (lambda d: d.write_text("tiny\n"), [], r"fewer than one batch"),
    (lambda d: None, [], r"data.path `.*`: no such file or folder"),
])
def test_bad_text_sources_are_clear_errors(workdir, setup, overrides, message):
    path = workdir / "input"
    setup(path)
    with pytest.raises(UserError, match=message):
        load_data(_files(workdir, path, *overrides), workdir)


def test_config_rules_are_checked(workdir):
    with pytest.raises(ConfigError, match=r"key `data.path` is required when `data.source` is `files`"):
        _cfg(workdir, "data.source=files")
    with pytest.raises(ConfigError, match=r"key `model.activation`: applies to `simple_rnn` only"):
        _cfg(workdir, "model.cell=gru", "model.activation=relu")
    with pytest.raises(ConfigError, match=r"key `model.cell`: got 'transformer'"):
        _cfg(workdir, "model.cell=transformer")


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("cell, params", [("simple_rnn", 10 * 4 + (4 * 8 + 8 * 8 + 8) + (8 * 10 + 10)),
                                          ("gru", 10 * 4 + 3 * (4 * 8 + 8 * 8 + 2 * 8) + (8 * 10 + 10)),
                                          ("lstm", 10 * 4 + 4 * (4 * 8 + 8 * 8 + 8) + (8 * 10 + 10))])
def test_parameter_counts_and_stepping_matches_the_whole_sequence(cell, params):
    model = build_dialogue_rnn(10, cell=cell, units=[8], embedding_dim=4, seed=0)
    assert model.count_params() == params
    stacked = build_dialogue_rnn(10, cell=cell, units=[8, 6], embedding_dim=4, dropout=0.3, seed=0)
    tokens = np.random.default_rng(0).integers(0, 10, (3, 7)).astype(np.int32)
    want = np.asarray(stacked(tokens, training=False))
    states = initial_states(stacked, 3)
    for t in range(7):
        output, states = advance(stacked, tf.constant(tokens[:, t]), states)
        np.testing.assert_allclose(np.asarray(next_logits(stacked, output)), want[:, t], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- a trained export


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GRU smoke run (two layers), trained and exported once for the tests below."""
    workdir = tmp_path_factory.mktemp("dialogue")
    cfg = load_config(CONFIGS / "smoke" / "dialogue_gru.yaml", [
        f"tracking.uri=sqlite:///{workdir}/mlflow.db", f"runs_dir={workdir / 'runs'}", f"export.dir={workdir / 'exports'}",
        "train.max_steps_per_epoch=20"])
    result = train(cfg)
    return cfg, result, tf.saved_model.load(str(result.export_dir))


def _generate(loaded, prompts, max_tokens=30, temperature=1.0, top_k=0, seed=1):
    rows = [len(prompts)]  # every input per row
    out = loaded.signatures["generate"](prompt=tf.constant(prompts), max_tokens=tf.fill(rows, tf.constant(max_tokens, tf.int32)),
                                        temperature=tf.fill(rows, tf.constant(temperature, tf.float32)),
                                        top_k=tf.fill(rows, tf.constant(top_k, tf.int32)),
                                        seed=tf.fill(rows, tf.constant(seed, tf.int64)))
    return [t.decode() for t in out["text"].numpy()], out


def test_samples_are_logged_to_mlflow_after_each_epoch(trained):
    import mlflow

    _, result, _ = trained
    client = mlflow.MlflowClient(result.tracking_uri)
    assert [a.path for a in client.list_artifacts(result.run_id, "samples")] == ["samples/epoch_001.txt", "samples/epoch_002.txt"]
    text = client.download_artifacts(result.run_id, "samples/epoch_002.txt")
    assert "--- prompt 'ROMEO:'" in Path(text).read_text()
    assert {"val_loss", "val_perplexity", "val_bits_per_char"} <= set(client.get_run(result.run_id).data.metrics)
    history = result.history[-1]
    np.testing.assert_allclose(history["val_perplexity"], np.exp(history["val_loss"]), rtol=1e-4)
    np.testing.assert_allclose(history["val_bits_per_char"], history["val_loss"] / np.log(2), rtol=1e-4)


def test_generate_is_deterministic_for_a_seed_and_differs_across_seeds(trained):
    _, _, loaded = trained
    first, _ = _generate(loaded, ["ROMEO:", "JULIET:"], seed=5)
    again, _ = _generate(loaded, ["ROMEO:", "JULIET:"], seed=5)
    other, _ = _generate(loaded, ["ROMEO:", "JULIET:"], seed=6)
    assert first == again and first != other
    assert all(len(t) == 30 for t in first)  # characters: one per token
    greedy, _ = _generate(loaded, ["ROMEO:"], temperature=0.0, seed=1)
    assert greedy == _generate(loaded, ["ROMEO:"], temperature=0.0, seed=2)[0] == _generate(loaded, ["ROMEO:"], top_k=1, seed=3)[0]


def test_empty_prompt_unknown_characters_and_token_limits(trained):
    cfg, _, loaded = trained
    text, out = _generate(loaded, ["", "\u2603\u2603 ROMEO", "ROMEO"], seed=2)
    assert all(len(t) == 30 and "[UNK]" not in t for t in text)  # the unknown token is never generated
    assert out["unknown_tokens"].numpy().tolist() == [0, 2, 0]
    none, out = _generate(loaded, ["ROMEO:"], max_tokens=0)
    assert none == [""] and out["num_tokens"].numpy().tolist() == [0]
    negative, _ = _generate(loaded, ["ROMEO:"], max_tokens=-5)
    assert negative == [""]
    huge, out = _generate(loaded, ["ROMEO:"], max_tokens=2**31 - 1)
    assert out["num_tokens"].numpy().tolist() == [cfg.samples.max_tokens_limit] and len(huge[0]) == cfg.samples.max_tokens_limit


def test_next_token_gives_the_likeliest_tokens_and_their_probabilities(trained):
    _, result, loaded = trained
    out = loaded.signatures["next_token"](text=tf.constant(["ROMEO:", "", "\u2603"]), k=tf.fill([3], 5))
    p = out["probability"].numpy()
    assert p.shape == (3, 5) and np.all(np.diff(p, axis=1) <= 0) and np.all(p.sum(axis=1) <= 1 + 1e-6)
    assert b"[UNK]" not in out["token"].numpy()
    assert out["unknown_tokens"].numpy().tolist() == [0, 0, 1]
    everything = loaded.signatures["next_token"](text=tf.constant(["ROMEO:"]), k=tf.constant([10**6]))
    vocab_size = export_lib.read_metadata(result.export_dir)["vocab_size"]
    assert everything["probability"].shape == (1, vocab_size - 1)  # k clamped to the vocabulary, the unknown token left out
    assert 0.9 < everything["probability"].numpy().sum() <= 1 + 1e-6


_RELOAD = WITHOUT_REELML + """import tensorflow as tf
assert not tf.config.list_logical_devices('GPU')
loaded = tf.saved_model.load(sys.argv[1])
out = loaded.signatures['generate'](prompt=tf.constant(['ROMEO:']), max_tokens=tf.constant([25]), temperature=tf.constant([0.7]),
                                    top_k=tf.constant([5]), seed=tf.constant([11], tf.int64))
print(json.dumps(out['text'].numpy()[0].decode()))
"""


def test_export_reloads_on_cpu_without_reelml_and_generates_the_same_text(trained):
    _, result, loaded = trained
    want, _ = _generate(loaded, ["ROMEO:"], max_tokens=25, temperature=0.7, top_k=5, seed=11)
    proc = subprocess.run([sys.executable, "-I", "-c", _RELOAD, str(result.export_dir)], capture_output=True, text=True,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == want[0]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_exports_hold_no_cudnn_ops_and_verify_on_cpu(workdir, cell):
    """Serving steps the cells: no cuDNN-only op can enter the graph, even when exported on a GPU machine."""
    from training.train import _write_export

    cfg = _cfg(workdir, f"model.cell={cell}", "model.units=[8, 8]", f"name=dialogue-{cell}")
    data = load_data(cfg, workdir)
    model = TASK.build_model(cfg, data)
    export_dir = _write_export(cfg, TASK, model, data, None, "run", [], {})  # verified in `python -I` with no GPU visible
    graph = (export_dir / "saved_model.pb").read_bytes()
    assert b"Cudnn" not in graph and b"cudnn" not in graph


def test_predict_cli_generates_and_lists_next_tokens(trained, tmp_path, capsys):
    _, result, _ = trained
    out = tmp_path / "gen.jsonl"
    assert cli_main(["predict", str(result.export_dir.parent), "--prompt", "ROMEO:", "--prompt", "", "--max-tokens", "12",
                     "--seed", "3", "-o", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["ROMEO:", ""] and all(len(r["text"]) == 12 and r["seed"] == 3 for r in rows)
    assert cli_main(["predict", str(result.export_dir), "--prompt", "ROMEO:", "--next", "-k", "3", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["probability"] >= rows[1]["probability"]


@pytest.mark.parametrize("args, message", [
    (["--max-tokens", "-1", "--prompt", "a"], r"--max-tokens -1: expected 0 or more"),
    (["--temperature", "-0.5", "--prompt", "a"], r"--temperature -0.5: expected a number from 0"),
    (["--top-k", "-2", "--prompt", "a"], r"--top-k -2: expected 0"),
    (["--next", "-k", "0", "--prompt", "a"], r"-k 0: expected at least 1"),
    ([], r"give --prompt TEXT"),
    (["some_file.txt"], r"a dialogue export takes --prompt"),
])
def test_predict_cli_rejects_bad_options(trained, capsys, args, message):
    _, result, _ = trained
    assert cli_main(["predict", str(result.export_dir), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(message, err), err


def test_report_shows_loss_by_position(trained):
    cfg, result, _ = trained
    import mlflow

    client = mlflow.MlflowClient(result.tracking_uri)
    assert "plots/loss_by_position.png" in {a.path for a in client.list_artifacts(result.run_id, "plots")}
    meta = export_lib.read_metadata(result.export_dir)
    assert meta["level"] == "char" and meta["max_tokens_limit"] == cfg.samples.max_tokens_limit
