"""Serving latency and throughput: `mlflow models serve` against the same signature called in-process.

    python scripts/bench_serving.py [--workdir /tmp/reelml-bench-serving] [--rounds 40] [--json out.json]
                                    [--families frames,autoencoder,dialogue,recommender]

For each family, trains its default config (`configs/<family>.yaml`) for one short epoch (the default
architecture, so the model computes what a real one does; its quality plays no part in latency) in
--workdir, tracked in a local SQLite store, registered and promoted to `champion`. Then, per family, it
starts `mlflow models serve -m models:/NAME@champion --env-manager local -h 127.0.0.1` and measures,
at batch 1 and batch 64, three ways to get the same answer:

- `signature`: the export's `serving_default` signature, called in this process (`tf.saved_model.load`);
- `pyfunc`: the registered MLflow model loaded in this process (`mlflow.pyfunc.load_model(...).predict`
  on a DataFrame): the pyfunc's conversions, without HTTP;
- `http`: a `dataframe_split` JSON request to the server over one kept-alive connection (JSON
  encoding, base64 of images, the scoring server's parsing and schema checks, and the answer's JSON).

The three are timed in alternating order within each round (the machine's noise falls on all three),
after warm-up calls. Reported: median and p99 latency per call, throughput (rows per second at the
median), and the ratios http / signature and pyfunc / signature. The server runs one worker on the same
machine: its CPU time competes with this process only between calls (calls are sequential).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAMILIES = ("frames", "autoencoder", "dialogue", "recommender")
SHORT = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.warmup_epochs=0", "tracking.promote_if=%s"]
PROMOTE = {"frames": "test_loss>=0", "autoencoder": "test_loss>=0", "dialogue": "val_loss_second_half>=0",
           "recommender": "test_loss>=0"}


def _train(family: str, workdir: Path, uri: str):
    from training.config import load_config
    from training.train import train

    overrides = [o % PROMOTE[family] if "%s" in o else o for o in SHORT] + [f"tracking.uri={uri}"]
    cfg = load_config(REPO / "configs" / f"{family}.yaml", overrides)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = train(cfg)
    finally:
        os.chdir(cwd)
    return cfg.name, workdir / result.export_dir


def _inputs(family: str, export_dir: Path, batch: int, workdir: Path) -> dict:
    """`batch` rows of `serving_default`'s inputs, as Python values (bytes for strings)."""
    if family in ("frames", "autoencoder"):
        files = sorted((workdir / "data").rglob("*.jpg"))  # the sample frames the run trained on
        return {"images": [files[i % len(files)].read_bytes() for i in range(batch)]}
    if family == "dialogue":
        prompts = [b"ROMEO:", b"JULIET:", b"", b"To be, or not"]
        return {"prompt": [prompts[i % 4] for i in range(batch)], "max_tokens": [20] * batch,
                "temperature": [0.8] * batch, "top_k": [0] * batch, "seed": list(range(batch))}
    meta = json.loads((export_dir / "assets.extra" / "reelml.json").read_text())
    users = [f"u{i % max(1, meta.get('num_users', 1)):04d}".encode() for i in range(batch)]
    return {"user_id": users, "k": [10] * batch}


def _signature_call(signature, specs, inputs):
    import tensorflow as tf

    tensors = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
    return lambda: {k: v.numpy() for k, v in signature(**tensors).items()}


def _frame(inputs):
    import pandas as pd

    return pd.DataFrame({k: [x.decode() if isinstance(x, bytes) and k != "images" else x for x in v]
                         for k, v in inputs.items()})


def _body(inputs) -> bytes:
    columns = list(inputs)

    def cell(key, value):
        if isinstance(value, bytes):
            return base64.b64encode(value).decode() if key == "images" else value.decode()
        return value

    rows = [[cell(k, inputs[k][i]) for k in columns] for i in range(len(inputs[columns[0]]))]
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model_uri: str, uri: str, log: Path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,  # the server runs `uvicorn` from PATH: this interpreter's
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                 "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"mlflow models serve did not start; see {log}")


def _http_call(port: int, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call():
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:500]!r}")
        return json.loads(data)

    return call, conn


def _stats(seconds: list[float], batch: int) -> dict:
    a = np.asarray(seconds)
    median = float(np.median(a))
    return {"median_ms": 1000 * median, "p99_ms": 1000 * float(np.percentile(a, 99)), "rows_per_s": batch / median,
            "calls": len(a)}


def measure(family: str, name: str, export_dir: Path, uri: str, rounds: int, workdir: Path) -> dict:
    import mlflow
    import tensorflow as tf

    mlflow.set_tracking_uri(uri)
    signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    proc, port = _serve(f"models:/{name}@champion", uri, workdir / f"serve-{family}.log")
    out = {}
    try:
        for batch in (1, 64):
            inputs = _inputs(family, export_dir, batch, workdir)
            frame = _frame(inputs)
            http_call, conn = _http_call(port, _body(inputs))
            ways = {"signature": _signature_call(signature, specs, inputs), "pyfunc": lambda: pyfunc.predict(frame),
                    "http": http_call}
            for call in ways.values():  # warm-up: tracing, caches, the connection
                for _ in range(3):
                    call()
            times = {k: [] for k in ways}
            for r in range(rounds):
                order = list(ways) if r % 2 == 0 else list(reversed(ways))
                for key in order:
                    start = time.perf_counter()
                    ways[key]()
                    times[key].append(time.perf_counter() - start)
            conn.close()
            stats = {k: _stats(v, batch) for k, v in times.items()}
            for k in ("pyfunc", "http"):
                stats[k]["median_ratio"] = stats[k]["median_ms"] / stats["signature"]["median_ms"]
                stats[k]["p99_ratio"] = stats[k]["p99_ms"] / stats["signature"]["p99_ms"]
            out[f"batch_{batch}"] = stats
            print(f"{family} batch {batch}: " + "; ".join(
                f"{k} {s['median_ms']:.2f} ms (p99 {s['p99_ms']:.2f}), {s['rows_per_s']:.0f} rows/s" for k, s in stats.items()),
                flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    return out


def table(results: dict) -> str:
    lines = ["| family | batch | signature median / p99 (ms) | pyfunc median / p99 (ms) | HTTP median / p99 (ms) | "
             "HTTP rows/s | HTTP / signature (median, p99) | pyfunc / signature (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for family, by_batch in results.items():
        for batch, s in by_batch.items():
            sig, py, web = s["signature"], s["pyfunc"], s["http"]
            lines.append(f"| {family} | {batch.split('_')[1]} | {sig['median_ms']:.2f} / {sig['p99_ms']:.2f} | "
                         f"{py['median_ms']:.2f} / {py['p99_ms']:.2f} | {web['median_ms']:.2f} / {web['p99_ms']:.2f} | "
                         f"{web['rows_per_s']:.0f} | {web['median_ratio']:.2f}x, {web['p99_ratio']:.2f}x | "
                         f"{py['median_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/reelml-bench-serving"))
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per way, batch and family")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)} (expected some of {', '.join(FAMILIES)})")
    args.workdir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{args.workdir.resolve()}/mlflow.db"
    trained = {f: _train(f, args.workdir, uri) for f in families}
    results = {f: measure(f, *trained[f], uri, args.rounds, args.workdir) for f in families}
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
