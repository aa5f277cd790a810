"""Autoencoder benchmarks on ../shared/data/intel_scenes at 64x64, measured side by side in one run.

    python scripts/bench_autoencoder.py [--config configs/autoencoder_intel.yaml] [--set key=value ...]
                                        [--workdir /tmp/reelml-bench-ae] [--export DIR]

Trains the config with `reelml train`'s code in --workdir (or takes an existing --export of it), then:

(a) reconstruction: the export's test MSE (pixels in [0, 1], the `reconstruction_error` output)
    against PCA with the same code size, fitted on the same training frames (the run's training
    split, validation frames left out as the run left them out). Target ratio <= 0.9.
(b) anomaly detection: AUROC of the export's `anomaly_score` separating the clean test frames
    from corrupted copies of them: block noise, a dropped colour channel, black frames, heavy blur,
    JPEG damage; per corruption and overall (all five against the clean frames). Target >= 0.95.
    The AUROC of the plain reconstruction MSE is reported beside it, and the share of each set
    that `is_anomaly` flags at the export's calibrated threshold. Four more kinds of damage that
    played no part in designing the score (sensor noise, overexposure, pixelation, a line tear)
    are reported apart: the fairer estimate for damage nobody anticipated.

Corruptions are applied to the decoded 64x64 test frames and scored through the export's
`analyse_pixels` signature, so the score is exactly what a server computes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.config import load_config  # noqa: E402
from training.tasks.autoencoder import TASK as autoencoder  # noqa: E402

CORRUPTIONS = ("block_noise", "dropped_channel", "black_frame", "heavy_blur", "jpeg_damage")


# --------------------------------------------------------------------------- corruptions


def block_noise(frame, rng):
    """Four random blocks of a quarter of the frame's side replaced by uniform noise (a digital dropout)."""
    out = frame.copy()
    side = frame.shape[0] // 4
    for _ in range(4):
        y, x = rng.integers(0, frame.shape[0] - side), rng.integers(0, frame.shape[1] - side)
        out[y:y + side, x:x + side] = rng.integers(0, 256, (side, side, 3))
    return out


def dropped_channel(frame, rng):
    """One of R, G, B set to zero."""
    out = frame.copy()
    out[..., rng.integers(0, 3)] = 0
    return out


def black_frame(frame, rng):
    """A near-black frame: values 0 to 3 (sensor noise on black)."""
    return rng.integers(0, 4, frame.shape).astype(np.uint8)


def heavy_blur(frame, rng, sigma=3.0):
    """Gaussian blur, sigma 3 px at 64 px (about 7 px at the original 150 px)."""
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(frame.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 0, padded)
    both = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 1, rows)
    return np.clip(np.round(both), 0, 255).astype(np.uint8)


def jpeg_damage(frame, rng):
    """A JPEG whose entropy-coded data has 8 random bytes overwritten, decoded as a decoder would show it
    (smeared, shifted, wrongly coloured blocks from the damage on). Damage that no longer decodes is retried."""
    jpeg = bytearray(tf.io.encode_jpeg(frame, quality=90).numpy())
    start = jpeg.find(b"\xff\xda") + 20  # after the start-of-scan header
    for _ in range(20):
        damaged = jpeg.copy()
        for position in rng.integers(start, len(jpeg) - 2, 8):
            damaged[position] = rng.integers(0, 255)
        try:
            out = tf.io.decode_jpeg(bytes(damaged), channels=3).numpy()
        except tf.errors.InvalidArgumentError:
            continue
        if out.shape == frame.shape and np.abs(out.astype(int) - frame).mean() > 2:
            return out
    return tf.io.decode_jpeg(tf.io.encode_jpeg(frame, quality=2), channels=3).numpy()  # never reached in practice


# Damage that played no part in designing the `typicality` score (its statistics were chosen on the five
# above): reported apart, as the fairer estimate for kinds of damage nobody anticipated.
UNSEEN = ("sensor_noise", "overexposed", "pixelated", "line_tear")


def sensor_noise(frame, rng):
    """Gaussian noise, sigma 20 of 255 on every pixel (a failing sensor or a bad gain setting)."""
    return np.clip(frame + rng.normal(0, 20, frame.shape), 0, 255).astype(np.uint8)


def overexposed(frame, rng):
    """Exposure pushed 2.5x, highlights clipped (a blown-out frame)."""
    return np.clip(frame.astype(np.float64) * 2.5, 0, 255).astype(np.uint8)


def pixelated(frame, rng):
    """Every 8x8 block replaced by its top-left pixel (a frame decoded at 1/8 resolution)."""
    return np.repeat(np.repeat(frame[::8, ::8], 8, axis=0), 8, axis=1)


def line_tear(frame, rng):
    """A horizontal tear: from a random row down, the picture is shifted sideways by a quarter of its width."""
    out = frame.copy()
    row = rng.integers(frame.shape[0] // 4, 3 * frame.shape[0] // 4)
    out[row:] = np.roll(frame[row:], frame.shape[1] // 4, axis=1)
    return out


def corrupt(frames, name, seed):
    rng = np.random.default_rng(seed)
    fn = globals()[name]
    sys.stderr.flush()
    saved = os.dup(2)  # libjpeg prints a warning per damaged file: expected here, and thousands of lines
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            return np.stack([fn(f, rng) for f in frames])
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# --------------------------------------------------------------------------- measures


def auroc(negatives, positives):
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    from scipy.stats import rankdata  # scipy comes with mlflow

    ranks = rankdata(np.concatenate([negatives, positives]))
    n_neg, n_pos = len(negatives), len(positives)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pixels_of(dataset):
    return np.concatenate([np.round(x.numpy() * 255).astype(np.uint8) for x, _ in dataset])


def run_export(loaded, pixels, batch=200):
    outs = [loaded.signatures["analyse_pixels"](pixels=tf.constant(pixels[i:i + batch])) for i in range(0, len(pixels), batch)]
    return {k: np.concatenate([o[k].numpy() for o in outs]) for k in ("score", "reconstruction_error", "is_anomaly")}


def pca_test_mse(train, test, k):
    x = train.reshape(len(train), -1).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:k]
    t = test.reshape(len(test), -1).astype(np.float64) / 255.0 - mean
    return float(np.mean((t @ basis.T @ basis - t) ** 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "autoencoder_intel.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", default="/tmp/reelml-bench-ae", help="runs/, exports/ and mlflow.db go here")
    parser.add_argument("--export", help="an existing export of this config (skips training)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = Path(args.config).resolve()
    os.chdir(REPO)  # the config's data paths are relative to the repository root
    overrides = [f"runs_dir={workdir / 'runs'}", f"export.dir={workdir / 'exports'}",
                 f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", *args.overrides]
    cfg = load_config(config, overrides)
    if not Path(cfg.data.train_dir or "").is_dir() and cfg.data.source == "folders":
        sys.exit(f"{cfg.data.train_dir}: not found (the benchmark needs ../shared/data/intel_scenes)")

    train_seconds = None
    if args.export:
        from training.export import resolve_export_dir

        export_dir = resolve_export_dir(args.export)  # exports/<name> (newest version) or a version folder
    else:
        from training.train import train

        start = time.perf_counter()
        result = train(cfg)
        train_seconds = time.perf_counter() - start
        export_dir = result.export_dir
    export_dir = Path(export_dir).resolve()

    # The frames exactly as the run split them: training split (no flips, shifts or zooms) for PCA, test split for both.
    plain = load_config(config, overrides + ["data.random_flip=false", "data.random_shift=0", "data.random_zoom=0", "data.cache=none"])
    data = autoencoder.load_data(plain, workdir / "bench-data")
    train_pixels, test_pixels = pixels_of(data.train), pixels_of(data.test)
    loaded = tf.saved_model.load(str(export_dir))

    clean = run_export(loaded, test_pixels)
    ae_mse = float(clean["reconstruction_error"].mean())
    k = cfg.model.code_size
    pca_mse = pca_test_mse(train_pixels, test_pixels, k)
    figures = {"export": str(export_dir), "train_seconds": train_seconds, "code_size": k,
               "train_frames": len(train_pixels), "test_frames": len(test_pixels),
               "ae_test_mse": ae_mse, "pca_test_mse": pca_mse, "mse_ratio": ae_mse / pca_mse,
               "anomaly_score": cfg.anomaly.score, "clean_flagged": float(clean["is_anomaly"].mean()), "corruptions": {}}

    def score(names, first_seed, extra):
        """AUROC per corruption into `figures`; returns the AUROC of the score and of MSE for the group together."""
        scores, errors = [], []
        for i, name in enumerate(names):
            out = run_export(loaded, corrupt(test_pixels, name, seed=first_seed + i))
            scores.append(out["score"])
            errors.append(out["reconstruction_error"])
            figures["corruptions"][name] = {"auroc": auroc(clean["score"], out["score"]),
                                            "auroc_mse": auroc(clean["reconstruction_error"], out["reconstruction_error"]),
                                            "flagged": float(out["is_anomaly"].mean()), **extra}
        return auroc(clean["score"], np.concatenate(scores)), auroc(clean["reconstruction_error"], np.concatenate(errors))

    figures["auroc_overall"], figures["auroc_overall_mse"] = score(CORRUPTIONS, 0, {})
    figures["auroc_unseen"], _ = score(UNSEEN, 100, {"unseen": True})

    print(f"\nexport {export_dir}  (code size {k}, {len(train_pixels)} training and {len(test_pixels)} test frames"
          + (f", trained in {train_seconds / 60:.1f} min" if train_seconds else "") + ")")
    print(f"(a) test MSE: autoencoder {ae_mse:.5f}, PCA-{k} {pca_mse:.5f}, ratio {ae_mse / pca_mse:.3f} (target <= 0.9)")
    print(f"(b) anomaly AUROC ({cfg.anomaly.score} score; plain MSE beside it); clean test frames flagged: "
          f"{figures['clean_flagged']:.1%}")
    print("| corruption | AUROC | AUROC of MSE | flagged at the threshold |\n| --- | --- | --- | --- |")
    for name, f in figures["corruptions"].items():
        print(f"| {name} | {f['auroc']:.3f} | {f['auroc_mse']:.3f} | {f['flagged']:.1%} |")
        if name == CORRUPTIONS[-1]:
            print(f"| all five | {figures['auroc_overall']:.3f} | {figures['auroc_overall_mse']:.3f} | |")
    print(f"| the four unseen together | {figures['auroc_unseen']:.3f} | | |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
