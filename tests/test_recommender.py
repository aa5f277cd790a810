"""The recommender's contracts: file formats, the split, negatives, ranking metrics, export and predict."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from training.config import load_config
from training.epochs import set_epoch
from training.errors import ConfigError, UserError
from training.tasks.recommender.data import load_data, train_dataset
from training.tasks.recommender.metrics import RankingMetric, held_out_ranks, ranking
from training.tasks.recommender.model import build_model
from training.tasks.recommender.readers import Log, detect_format, read_interactions, read_tfds, read_titles
from training.tasks.recommender.serving import popularity
from training.tasks.recommender.split import complement_items, make_split
from training.train import train

from conftest import CONFIGS, SHARED_DATA, WITHOUT_REELML, run_cli

ML100K = SHARED_DATA / "movielens_100k"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").exists(), reason=f"MovieLens 100K not found at {ML100K}")


def _columns(**kw):
    from training.config import Columns

    return Columns(**kw)


# --------------------------------------------------------------------------- file formats


def test_movielens_100k_u_data(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    log = read_interactions(path)
    assert list(log.users) == ["196", "186"] and list(log.items) == ["242", "302"]
    assert list(log.rating) == [3, 3] and list(log.timestamp) == [881250949, 891717742] and log.weight is None


def test_movielens_1m_ratings_dat(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    log = read_interactions(path)
    assert list(log.users) == ["1", "1"] and list(log.items) == ["1193", "661"] and list(log.rating) == [5, 3]


def test_movielens_latest_ratings_csv(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n")
    assert detect_format(path) == "movielens_latest"
    log = read_interactions(path)
    assert list(log.items) == ["1", "3"] and list(log.rating) == [4.0, 4.5]


def test_column_mapped_csv_with_weights(tmp_path):
    path = tmp_path / "views.csv"
    path.write_text("viewer;title_id;minutes;when\nana;T-1;42.5;10\nbo;T-2;3;11\n")
    cols = _columns(user="viewer", item="title_id", weight="minutes", timestamp="when")
    log = read_interactions(path, "csv", cols, delimiter=";")
    assert list(log.users) == ["ana", "bo"] and list(log.items) == ["T-1", "T-2"]
    assert list(log.weight) == [42.5, 3.0] and list(log.timestamp) == [10, 11] and log.rating is None


def test_parquet_with_a_column_mapping(tmp_path):
    import pandas as pd

    path = tmp_path / "log.parquet"
    pd.DataFrame({"u": [7, 8], "i": ["x", "y"], "r": [1.0, 5.0]}).to_parquet(path)
    log = read_interactions(path, "auto", _columns(user="u", item="i", rating="r"))
    assert list(log.users) == ["7", "8"] and list(log.items) == ["x", "y"] and list(log.rating) == [1.0, 5.0]


@pytest.mark.parametrize("name,text,message", [
    ("u.data", "1\t2\t3\t4\n5\t6\tthree\t8\n", r"u.data: line 2: malformed row, column `rating` is 'three', expected a number"),
    ("u.data", "1\t2\t3\t4\n5\t6\t7\t8\n9\t10\n", r"u.data: line 3: malformed row, expected 4 fields \(user, item, rating, timestamp\)"),
    ("u.data", "1\t2\t3\t4\n1\t2\t3\t4\t5\t6\n", r"u.data: line 2: malformed row, expected 4 fields, found 6"),
    ("u.data", "1\t2\t3\t4\t5\n1\t2\t3\t4\n", r"u.data: line 1: malformed row, expected 4 fields"),
    ("ratings.dat", "1::2::3::4\n1::2\n", r"ratings.dat: line 2: malformed row, expected 4 fields"),
    ("views.csv", "user_id,item_id\na,b\nc,d,e\n", r"views.csv: line 3: malformed row, expected 2 fields, found 3"),
    ("views.csv", "user_id,item_id\na,b\n,c\n", r"views.csv: line 3: malformed row, column `user_id` is '', expected an ID"),
    ("views.csv", "", r"views.csv: the file is empty"),
    ("views.csv", "user_id,item_id\n", r"views.csv: no interactions in the file"),
    ("views.csv", "who,what\na,b\n", r"views.csv: no column `user_id` \(data.columns.user\)"),
])
def test_malformed_files_are_reported_with_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_interactions(path, "auto", _columns())


def test_tfds_movielens_names(workdir):
    import tensorflow_datasets as tfds

    overrides = ["data.source=tfds", "data.tfds_name=movielens/100k-ratings", "data.tfds_download=false"]
    cfg = load_config(CONFIGS / "smoke" / "recommender.yaml", overrides)
    with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
        log = read_tfds(cfg.data)
    assert len(log.users) == len(log.items) == len(log.rating) == len(log.timestamp) == 50 and log.titles
    cfg = load_config(CONFIGS / "smoke" / "recommender.yaml", overrides + [f"data.tfds_data_dir={workdir / 'empty'}"])
    with pytest.raises(UserError, match=r"data.tfds_name `movielens/100k-ratings`: could not be loaded.*tfds_data_dir"):
        read_tfds(cfg.data)


def test_movielens_titles_are_latin_1(tmp_path):
    path = tmp_path / "u.item"
    path.write_bytes("1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|Café Society (1995)|01-Jan-1995||x|0\n".encode("latin-1"))
    assert read_titles(path, _columns()) == {"1": "Toy Story (1995)", "2": "Café Society (1995)"}


def test_malformed_row_through_the_cli_exits_2(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t4\nnot a row\n")
    result = run_cli("train", CONFIGS / "smoke" / "recommender.yaml", "--set", "data.source=file", "--set", f"data.path={path}",
                     "--set", "tracking.enabled=false", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{path}: line 2: malformed row" in result.stderr


# --------------------------------------------------------------------------- the split


def _log(n_users=30, n_items=150, per_user=12, seed=0, timestamps=True):
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        for t, i in enumerate(rng.choice(n_items, per_user, replace=False)):
            users.append(f"u{u}")
            items.append(f"i{i}")
            ts.append(1000 + 10 * t)
    return Log(users=np.array(users, dtype=object), items=np.array(items, dtype=object),
                   timestamp=np.array(ts, float) if timestamps else None)


def _pairs(users, items):
    return set(zip(users.tolist(), items.tolist()))


def test_split_holds_out_the_latest_interactions_and_leaks_nothing():
    log = _log()
    s = make_split(log, negatives=99, seed=3)
    assert len(s.test_users) == len(s.val_users) == 30
    train = _pairs(s.train_users, s.train_items)
    latest = {}
    for u, i, t in zip(log.users, log.items, log.timestamp):
        latest.setdefault(u, []).append((t, i))
    for u, cand in zip(s.test_users, s.test_candidates):
        history = sorted(latest[s.user_ids[u]])
        assert s.item_ids[cand[0]] == history[-1][1]  # the latest is the test item
        assert (u, cand[0]) not in train
    for u, cand in zip(s.val_users, s.val_candidates):
        assert s.item_ids[cand[0]] == sorted(latest[s.user_ids[u]])[-2][1]
        assert (u, cand[0]) not in train
    assert len(train) == 30 * 10


def test_train_on_validation_moves_only_the_validation_items_into_training():
    log = _log()
    held, final = make_split(log, negatives=99, seed=3), make_split(log, negatives=99, seed=3, train_on_validation=True)
    np.testing.assert_array_equal(held.test_users, final.test_users)
    np.testing.assert_array_equal(held.test_candidates, final.test_candidates)  # the same test, item for item
    assert len(final.val_users) == 0 and final.val_candidates.shape[0] == 0
    validation = _pairs(held.val_users, held.val_candidates[:, 0])
    assert _pairs(final.train_users, final.train_items) == _pairs(held.train_users, held.train_items) | validation
    assert not _pairs(final.test_users, final.test_candidates[:, 0]) & _pairs(final.train_users, final.train_items)


def test_split_is_deterministic_for_a_seed_and_random_without_timestamps():
    log = _log(timestamps=False)
    a, b, c = make_split(log, seed=1), make_split(log, seed=1), make_split(log, seed=2)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    np.testing.assert_array_equal(a.test_candidates, b.test_candidates)


def test_eval_negatives_are_distinct_and_never_seen():
    s = make_split(_log(), negatives=99, seed=0)
    seen = {u: set(s.seen_items[s.seen_splits[u]:s.seen_splits[u + 1]].tolist()) for u in range(s.num_users)}
    for users, candidates in ((s.val_users, s.val_candidates), (s.test_users, s.test_candidates)):
        assert candidates.shape == (30, 100)
        for u, cand in zip(users, candidates):
            assert len(set(cand[1:].tolist())) == 99 and not (set(cand[1:].tolist()) & seen[u])


def test_implicit_feedback_threshold_and_duplicate_views():
    log = Log(users=np.array(["a", "a", "a", "b"], dtype=object), items=np.array(["x", "x", "y", "y"], dtype=object),
                  rating=np.array([5.0, 5.0, 4.0, 2.0]), weight=np.array([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(UserError, match="catalogue has only"):
        make_split(log, min_rating=4, negatives=99)
    s = make_split(log, min_rating=4, negatives=1)
    assert list(s.user_ids) == ["a"] and s.duplicates == 1
    assert sorted(zip(s.train_items.tolist(), s.train_weights.tolist())) == [(0, pytest.approx(1.0)), (1, pytest.approx(1.0))]


def test_complement_sampling_is_exact():
    positives = np.array([0, 3, 4, 9])
    assert complement_items(positives, np.arange(6)).tolist() == [1, 2, 5, 6, 7, 8]


def test_training_negatives_avoid_positives_and_change_every_epoch():
    s = make_split(_log(n_users=20, n_items=120, per_user=40), negatives=20, seed=0)
    ds = train_dataset(s, negatives=4, batch_size=64, seed=7)
    positives = _pairs(s.train_users, s.train_items)
    epochs = []
    for epoch in (0, 1, 0):  # the loop sets the epoch; a restart that redoes epoch 0 sees its negatives again
        set_epoch(epoch)
        negs, seen_positives = [], []
        for x, y in ds:
            users, items = x["user"].numpy(), x["item"].numpy()
            assert items.shape[1] == 5 and y.numpy()[:, 1:].max() == 0 and y.numpy()[:, 0].min() > 0
            seen_positives += list(zip(users.tolist(), items[:, 0].tolist()))
            for u, row in zip(users, items[:, 1:]):
                assert not any((u, i) in positives for i in row.tolist())
                negs.append(row)
        assert sorted(seen_positives) == sorted(positives)  # every positive once per epoch
        epochs.append(np.concatenate(negs))
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(epochs[0], epochs[2])


def test_recency_weight_favours_each_users_latest_training_interactions():
    log = _log(n_users=5, per_user=12)
    s = make_split(log, negatives=20, seed=0, recency_weight=2.0)
    times = dict(zip(zip(log.users, log.items), log.timestamp))
    assert s.train_weights.mean() == pytest.approx(1.0, rel=1e-5)
    for u in range(5):
        rows = np.flatnonzero(s.train_users == u)
        t = [times[(s.user_ids[u], s.item_ids[i])] for i in s.train_items[rows]]
        w = s.train_weights[rows][np.argsort(t)]
        assert np.all(np.diff(w) > 0)  # later interactions weigh more
        assert w[-1] / w[0] == pytest.approx(np.exp(2.0 * 9 / 11), rel=1e-4)  # places 0 .. 9 of 0 .. 11
    with pytest.raises(UserError, match="data.recency_weight: the data has no timestamps"):
        make_split(_log(timestamps=False), negatives=20, recency_weight=1.0)


def test_per_interaction_weights_reach_the_batches_with_mean_one():
    log = _log(n_users=10, per_user=20)
    log.weight = np.linspace(1, 100, len(log.users))
    s = make_split(log, negatives=20, seed=0)
    ds = train_dataset(s, negatives=2, batch_size=1000, seed=0)
    (_, y), = list(ds)
    assert y.numpy()[:, 0].mean() == pytest.approx(1.0, rel=1e-5) and y.numpy()[:, 0].std() > 0.1


# --------------------------------------------------------------------------- metrics


def test_hit_rate_and_ndcg_against_hand_computed_cases():
    # Held-out item in column 0. Row 1: rank 0. Row 2: two items above -> rank 2. Row 3: a tie -> rank 1 (ties against).
    scores = np.array([[0.9, 0.1, 0.2, 0.3], [0.5, 0.8, 0.7, 0.1], [0.4, 0.4, 0.1, 0.2]], np.float32)
    relevance = np.zeros_like(scores)
    relevance[:, 0] = 1
    assert held_out_ranks(scores).tolist() == [0, 2, 1]
    cases = {(1, "hit"): 1 / 3, (2, "hit"): 2 / 3, (3, "hit"): 1.0,
             (2, "ndcg"): (1 + 1 / np.log2(3)) / 3, (3, "ndcg"): (1 + 1 / np.log2(4) + 1 / np.log2(3)) / 3}
    for (k, kind), want in cases.items():
        metric = RankingMetric(k, kind)
        metric.update_state(relevance[:2], scores[:2])
        metric.update_state(relevance[2:], scores[2:])  # accumulates over batches
        assert float(metric.result()) == pytest.approx(want, rel=1e-6), (k, kind)
    constant = RankingMetric(3, "hit")  # 3 others tie with the held-out item: all rank above it
    constant.update_state(relevance, np.ones_like(scores))
    assert float(constant.result()) == 0.0  # a model that cannot tell items apart earns nothing


def test_ranking_metric_finds_the_positive_in_any_column():
    metric = RankingMetric(1, "hit")
    metric.update_state(np.array([[0, 0, 1.0]]), np.array([[0.1, 0.2, 0.3]]))
    assert float(metric.result()) == 1.0


# --------------------------------------------------------------------------- models


def test_model_parameter_counts_and_shapes():
    from models import ncf

    users, items = 10, 20
    x = {"user": np.array([1, 2]), "item": np.array([[0, 5, 7], [1, 2, 3]])}
    gmf = ncf.build_gmf(users, items, factors=4)
    assert gmf.count_params() == (users + items) * 4 + 4 + 1
    mlp = ncf.build_mlp(users, items, mlp_layers=[8, 4])
    assert mlp.count_params() == (users + items) * 4 + (8 * 4 + 4) + (4 + 1)
    neumf = ncf.build_neumf(users, items, factors=4, mlp_layers=[8, 4])
    assert neumf.count_params() == (users + items) * 8 + (8 * 4 + 4) + (8 + 1)
    seed = ncf.build_seed_cf(users, items, mlp_layers=[10])
    assert seed.count_params() == users * 10 + 10 + 10 * items + items
    mf = ncf.build_mf(users, items, factors=4)
    assert mf.count_params() == (users + items) * 4 + (users + items) + 1  # factors, user and item biases, global bias
    probabilities = np.asarray(mf(x))
    p, q = mf.get_layer("gmf_user_embedding").embeddings.numpy(), mf.get_layer("gmf_item_embedding").embeddings.numpy()
    expected = 1 / (1 + np.exp(-np.einsum("bf,bcf->bc", p[x["user"]], q[x["item"]])))  # biases start at zero
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)
    for model in (gmf, mlp, neumf, seed, mf):
        assert tuple(model(x).shape) == (2, 3)
        assert tuple(ncf.item_embeddings(model).shape)[0] == items


@pytest.mark.parametrize("name", ["mf", "gmf", "mlp", "neumf", "seed_cf"])
def test_the_softmax_loss_reads_each_models_logits_even_where_the_sigmoid_saturates(name):
    """`model.loss: softmax` is one cross-entropy per row over its candidates, from the logits behind the sigmoid."""
    import types

    from models import MODELS
    from training.tasks.recommender.model import BUILDER_KEYS, make_loss

    cfg = types.SimpleNamespace(model=types.SimpleNamespace(loss="softmax"))
    keys = {"factors": 4, "mlp_layers": [8, 4], "embedding_l2": 0.0}
    model = MODELS[name](num_users=5, num_items=9, l2=0.0, seed=1, **{k: keys[k] for k in BUILDER_KEYS[name]})
    x = {"user": tf.constant([1, 3]), "item": tf.constant([[0, 4, 7], [2, 5, 8]])}
    relevance = tf.constant([[1.0, 0, 0], [2.0, 0, 0]])  # the second row's positive weighs 2

    @tf.function
    def loss_and_probabilities():
        p = model(x, training=True)
        return make_loss(cfg, None)(relevance, p), p

    loss, p = (t.numpy() for t in loss_and_probabilities())
    logits = np.log(p) - np.log1p(-p)
    expected = -(logits[:, 0] - np.log(np.exp(logits).sum(-1))) * np.array([1.0, 2.0])
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    if name != "seed_cf":  # the seed's model gathers its scores after the sigmoid: log-odds of the clipped output
        # A logit far past the sigmoid's float32 range: the loss still sees it (the probability reads 1.0).
        model.get_layer("global_bias" if name == "mf" else "prediction").bias.assign(
            tf.fill(model.get_layer("global_bias" if name == "mf" else "prediction").bias.shape, 40.0))
        loss, p = (t.numpy() for t in loss_and_probabilities())
        assert (p == 1.0).all()
        np.testing.assert_allclose(loss, expected, rtol=1e-3)  # a shift of every logit leaves a softmax unchanged


def test_the_data_source_follows_what_is_given():
    default = CONFIGS / "recommender.yaml"
    assert load_config(default).data.source == "sample"
    assert load_config(default, ["data.path=views.csv"]).data.source == "file"
    assert load_config(default, ["data.tfds_name=movielens/100k-ratings"]).data.source == "tfds"
    assert load_config(default, ["data.path=views.csv", "data.source=sample"]).data.source == "sample"  # said wins


def test_builders_refuse_unknown_arguments_and_the_task_passes_each_all_of_its_own():
    import inspect

    from models import MODELS, ncf
    from training.tasks.recommender.model import BUILDER_KEYS

    with pytest.raises(TypeError, match="factor"):
        ncf.build_gmf(10, 20, factor=4)  # a typo is an error, not a default silently kept
    for name, keys in BUILDER_KEYS.items():
        assert set(inspect.signature(MODELS[name]).parameters) == {"num_users", "num_items", "l2", "seed", *keys}, name

def test_pretraining_is_checked_in_the_config():
    with pytest.raises(ConfigError, match="give both"):
        load_config(CONFIGS / "recommender_neumf.yaml", ["model.pretrain_gmf=exports/x"])
    with pytest.raises(ConfigError, match="only when `model.name` is `neumf`"):
        load_config(CONFIGS / "recommender_gmf.yaml", ["model.pretrain_gmf=a", "model.pretrain_mlp=b"])


# --------------------------------------------------------------------------- train, export, serve


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """GMF, MLP and NeuMF smoke runs on one split; NeuMF starts from the other two."""
    workdir = tmp_path_factory.mktemp("recommender")
    cwd = os.getcwd()
    os.chdir(workdir)
    common = [f"data.sample_dir={workdir / 'sample'}", f"tracking.uri=sqlite:///{workdir}/mlflow.db", "data.split_seed=0",
              "model.factors=4", "model.mlp_layers=[16, 8]"]
    try:
        gmf = train(load_config(CONFIGS / "smoke" / "recommender_gmf.yaml", common))
        mlp = train(load_config(CONFIGS / "smoke" / "recommender_mlp.yaml", common))
        neumf_cfg = load_config(CONFIGS / "smoke" / "recommender_neumf.yaml",
                                common + [f"model.pretrain_gmf={gmf.export_dir}", f"model.pretrain_mlp={mlp.run_id}"])
        neumf = train(neumf_cfg)
        data = load_data(neumf_cfg, workdir / "runs" / "reload")
    finally:
        os.chdir(cwd)
    for result in (gmf, mlp, neumf):
        result.export_dir = workdir / result.export_dir
    return {"workdir": workdir, "gmf": gmf, "mlp": mlp, "neumf": neumf, "cfg": neumf_cfg, "data": data}


def test_neumf_starts_from_the_pretrained_gmf_and_mlp(trained, monkeypatch):
    monkeypatch.chdir(trained["workdir"])
    model = build_model(trained["cfg"], trained["data"])
    gmf = {v.name.split(":")[0]: v.numpy() for v in tf.saved_model.load(str(trained["gmf"].export_dir)).variables}
    np.testing.assert_allclose(model.get_layer("gmf_item_embedding").embeddings.numpy(), gmf["gmf_item_embedding/embeddings"])
    kernel = model.get_layer("prediction").kernel.numpy()
    np.testing.assert_allclose(kernel[:4], 0.5 * gmf["prediction/kernel"], rtol=1e-6)


def test_pretraining_from_another_split_is_refused(trained, monkeypatch):
    monkeypatch.chdir(trained["workdir"])
    cfg = load_config(CONFIGS / "smoke" / "recommender_neumf.yaml", [
        f"data.sample_dir={trained['workdir'] / 'sample'}", "data.split_seed=5", "model.factors=4", "model.mlp_layers=[16, 8]",
        f"model.pretrain_gmf={trained['gmf'].export_dir}", f"model.pretrain_mlp={trained['mlp'].export_dir}"])
    data = load_data(cfg, trained["workdir"] / "runs" / "y")
    with pytest.raises(UserError, match="trained on other data or another split"):
        build_model(cfg, data)


_RELOAD = WITHOUT_REELML + """import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
users = json.loads(sys.argv[2])
rec = m.signatures['recommend'](user_id=tf.constant(users), k=tf.fill([len(users)], 10))
item = sys.argv[3]
sim = m.signatures['similar_items'](item_id=tf.constant([item, 'nope']), k=tf.fill([2], 5))
sc = m.signatures['score'](user_id=tf.constant(users[:1]), item_id=tf.constant([item]))
out = {'items': rec['item_id'].numpy().astype(str).tolist(), 'scores': rec['score'].numpy().tolist(),
       'known': rec['known_user'].numpy().tolist(), 'titles': rec['title'].numpy().astype(str).tolist(),
       'similar': sim['item_id'].numpy().astype(str).tolist(), 'similar_known': sim['known_item'].numpy().tolist(),
       'score': sc['score'].numpy().tolist(), 'signatures': sorted(m.signatures)}
print(json.dumps(out))
"""


def test_export_serves_raw_ids_without_reelml(trained):
    export_dir, s = trained["neumf"].export_dir, trained["data"].split
    users = [str(s.user_ids[0]), str(s.user_ids[5]), "someone new"]
    item = str(s.item_ids[1])
    proc = subprocess.run([sys.executable, "-I", "-c", _RELOAD, str(export_dir), json.dumps(users), item], capture_output=True,
                          text=True, env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"recommend", "score", "similar_items", "serving_default"} <= set(out["signatures"])
    assert out["known"] == [True, True, False]
    for row, user in enumerate(users[:2]):
        u = int(np.flatnonzero(s.user_ids == user)[0])
        seen = {str(s.item_ids[i]) for i in s.seen_items[s.seen_splits[u]:s.seen_splits[u + 1]]}
        assert len(out["items"][row]) == 10 and not seen & set(out["items"][row])  # never a seen item
        assert out["scores"][row] == sorted(out["scores"][row], reverse=True)
        assert all(t for t in out["titles"][row])  # the sample log has titles
    pop = popularity(s)
    assert out["scores"][2] == pytest.approx(sorted(pop.tolist(), reverse=True)[:10], rel=1e-6)  # unknown user: popularity
    tenth = np.sort(pop)[-10]
    assert all(pop[int(np.flatnonzero(s.item_ids == i)[0])] >= tenth - 1e-9 for i in out["items"][2])
    assert len(out["similar"][0]) == 5 and item not in out["similar"][0]
    assert out["similar_known"] == [True, False] and out["similar"][1] == [""] * 5
    assert 0.0 < out["score"][0] < 1.0


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_for_users_similar_items_and_a_users_file(trained, tmp_path):
    export_root, s = trained["neumf"].export_dir.parent, trained["data"].split
    result = run_cli("predict", export_root, "--user", "u0001", "--user", "nobody", "-k", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _csv(result.stdout)
    assert [r["user_id"] for r in rows] == ["u0001"] * 3 + ["nobody"] * 3
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"] and rows[0]["title"]
    assert "user nobody: unknown to the model" in result.stderr

    similar = run_cli("predict", export_root, "--similar-to", str(s.item_ids[2]), "-k", "4", cwd=tmp_path)
    assert similar.returncode == 0 and len(_csv(similar.stdout)) == 4

    ids = tmp_path / "users.txt"
    ids.write_text("user_id\nu0001\nu0002\n\nu0003\n")
    out = tmp_path / "recs.jsonl"
    batch = run_cli("predict", export_root, "--users-file", ids, "-k", "2", "-o", out, cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["user_id"] for x in lines] == ["u0001", "u0001", "u0002", "u0002", "u0003", "u0003"]

    nothing = run_cli("predict", export_root, cwd=tmp_path)
    assert nothing.returncode == 2 and "give --user USER_ID" in nothing.stderr


def test_report_logs_toppop_beside_the_model(trained):
    import mlflow

    run = mlflow.MlflowClient(trained["neumf"].tracking_uri).get_run(trained["neumf"].run_id)
    metrics = run.data.metrics
    assert {"test_hr_at_10", "test_ndcg_at_10", "test_toppop_hr_at_10", "val_toppop_hr_at_10", "val_hr_at_10"} <= set(metrics)
    assert run.data.params["train.monitor"] == "val_hr_at_10"


def test_a_monitor_that_is_not_measured_is_a_clear_error(workdir):
    cfg = load_config(CONFIGS / "smoke" / "recommender_gmf.yaml", [
        f"data.sample_dir={workdir / 'sample'}", "tracking.enabled=false", "train.monitor=val_hr_at_5"])
    with pytest.raises(UserError, match=r"train.monitor `val_hr_at_5`: not a validation metric.*val_hr_at_10"):
        train(cfg)


# --------------------------------------------------------------------------- MovieLens 100K


@needs_ml100k
def test_movielens_100k_split_and_toppop():
    log = read_interactions(ML100K / "u.data")
    assert len(log.users) == 100_000
    s = make_split(log, seed=0)
    assert (s.num_users, s.num_items, len(s.test_users)) == (943, 1682, 943)
    assert len(s.train_users) == 100_000 - 2 * 943
    hr, ndcg = ranking(held_out_ranks(popularity(s, train_only=True)[s.test_candidates]), 10)
    assert 0.33 < hr < 0.48 and 0.15 < ndcg < 0.3
    titles = read_titles(ML100K / "u.item", _columns())
    assert len(titles) == 1682 and titles["1"] == "Toy Story (1995)"
