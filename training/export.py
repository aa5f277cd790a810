"""Versioned, atomic SavedModel export, and its check in a process that cannot import reelml.

Layout: `<export.dir>/<name>/<version>/` with integer versions, the layout TF
Serving watches. A version is written under a hidden temporary name, verified,
and only then renamed into place, so a crash never leaves a half-written
version where a server could load it. Beside `saved_model.pb`,
`assets.extra/reelml.json` records the task, run, config and signatures
(TF Serving ignores `assets.extra/`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from training.errors import UserError

METADATA = Path("assets.extra") / "reelml.json"
_VERIFY_SCRIPT = Path(__file__).with_name("verify_export.py")


def versions(root: Path) -> list[int]:
    """The integer versions present under `root`, ascending."""
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_export_dir(path: str | Path) -> Path:
    """`exports/frames` (newest version) or `exports/frames/3` -> the version folder."""
    path = Path(path)
    if (path / "saved_model.pb").exists():
        return path
    found = versions(path)
    if found:
        return path / str(found[-1])
    raise UserError(f"`{path}`: not a SavedModel export (expected saved_model.pb in it, or integer version folders)")


def read_metadata(export_dir: Path) -> dict:
    try:
        return json.loads((export_dir / METADATA).read_text())
    except FileNotFoundError:
        raise UserError(f"`{export_dir}`: no {METADATA}; this export was not written by reelml") from None
    except json.JSONDecodeError as e:
        raise UserError(f"`{export_dir / METADATA}`: damaged metadata ({e})") from None


def find_run_export(root: Path, run_id: str | None) -> Path | None:
    """The version a run already exported (a re-run after a crash must not export twice)."""
    if not run_id:
        return None
    for v in versions(root):
        try:
            if json.loads((root / str(v) / METADATA).read_text()).get("run_id") == run_id:
                return root / str(v)
        except (OSError, json.JSONDecodeError):
            continue
    return None


# A version is written as `.tmp-<pid>@<host>-<hex>` (and its check's files in `...-verify`), so a later
# writer on the same host can tell the leftovers of a killed writer from those of a live one.
_TMP = re.compile(r"^\.tmp-(\d+)@(.+)-[0-9a-f]{8}(-verify)?$")
_LEGACY_TMP_AGE_S = 3600  # `.tmp-<hex>` of older versions name no writer: removed once an hour old


def _temp_name() -> str:
    return f".tmp-{os.getpid()}@{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temp(root: Path) -> list[Path]:
    """Removes the temporary folders that killed writers left under `<export.dir>/<name>`; returns them.

    A folder of a writer on another host is left alone (its process cannot be seen from here).
    """
    removed = []
    if not Path(root).is_dir():
        return removed
    host = socket.gethostname()
    for path in Path(root).iterdir():
        if not (path.is_dir() and path.name.startswith(".tmp-")):
            continue
        match = _TMP.match(path.name)
        if match:
            stale = match.group(2) == host and not _alive(int(match.group(1)))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > _LEGACY_TMP_AGE_S
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _encode_inputs(inputs: dict) -> dict:
    encoded = {}
    for endpoint, args in inputs.items():
        encoded[endpoint] = {}
        for name, value in args.items():
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
                encoded[endpoint][name] = {"bytes": [base64.b64encode(v).decode() for v in value]}
            else:
                array = np.asarray(value)
                encoded[endpoint][name] = {"dtype": str(array.dtype), "shape": list(array.shape), "values": array.ravel().tolist()}
    return encoded


def _expected_outputs(endpoints: dict, inputs: dict) -> dict:
    import tensorflow as tf

    out = {}
    for endpoint, args in inputs.items():
        fn, signature = endpoints[endpoint]
        tensors = [tf.constant(args[spec.name], dtype=spec.dtype) for spec in signature]
        out[endpoint] = {k: np.asarray(v) for k, v in fn(*tensors).items()}
    return out


def verify_in_fresh_process(export_dir: Path, endpoints: dict, inputs: dict) -> None:
    """Loads the export with `tf.saved_model.load` in a new Python that cannot import reelml; compares outputs.

    The request and answer files live beside the export, in `<export_dir>-verify`, so a kill leaves
    nothing that `remove_stale_temp` does not clear; the child exits when this process dies.
    """
    expected = _expected_outputs(endpoints, inputs)
    scratch = Path(f"{export_dir}-verify")
    scratch.mkdir()
    try:
        request = scratch / "inputs.json"
        request.write_text(json.dumps(_encode_inputs(inputs)))
        result = scratch / "outputs.json"
        proc = subprocess.run(
            [sys.executable, "-I", str(_VERIFY_SCRIPT), str(export_dir), str(request), str(result), str(os.getpid())],
            capture_output=True,
            text=True,
            env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the export at {export_dir} failed to load in a fresh process:\n{proc.stderr[-3000:]}")
        got = json.loads(result.read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for endpoint, outputs in expected.items():
        for name, want in outputs.items():
            have = got[endpoint][name]
            if want.dtype.kind in "SUO":
                same = [base64.b64decode(v) for v in have] == [bytes(v) for v in want.ravel()]
            else:
                same = np.allclose(np.asarray(have, dtype=np.float64).reshape(want.shape), want, rtol=1e-4, atol=1e-5)
            if not same:
                raise RuntimeError(f"export check failed: `{endpoint}` output `{name}` differs after reload")


def export(model, endpoints: dict, root: Path, metadata: dict, config_yaml: str, verify_inputs: dict | None) -> Path:
    """Writes the next version of an export atomically and returns its folder.

    Args:
        model: the Keras model (tracked, so its variables are saved once), or a
            layer holding it together with the lookup tables its endpoints use.
        endpoints: `{signature name: (fn, [tf.TensorSpec(name=...)])}`; the one
            named `serving_default` is what TF Serving calls by default.
        root: `<export.dir>/<name>`.
        metadata: written to `assets.extra/reelml.json` (task, run id, classes ...).
        config_yaml: the resolved config, written beside it.
        verify_inputs: `{signature: {input name: value}}`; if given, the export is
            reloaded in a fresh process and must reproduce the model's outputs.
    """
    import keras

    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(root)
    tmp = root / _temp_name()
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, (fn, signature) in endpoints.items():
            archive.add_endpoint(name=name, fn=fn, input_signature=signature)
        archive.write_out(str(tmp), verbose=False)
        (tmp / METADATA).parent.mkdir(exist_ok=True)
        signatures = {name: [s.name for s in sig] for name, (_, sig) in endpoints.items()}
        (tmp / METADATA).write_text(json.dumps({**metadata, "signatures": signatures}, indent=2))
        (tmp / METADATA.with_name("config.yaml")).write_text(config_yaml)
        if verify_inputs:
            verify_in_fresh_process(tmp, endpoints, verify_inputs)
        while True:  # another writer may take a version number first: take the next one
            target = root / str((versions(root) or [0])[-1] + 1)
            try:
                tmp.rename(target)
                return target
            except OSError:
                if not target.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
