"""Loads a SavedModel where reelml cannot be imported and runs its signatures.

Run as a script in a fresh `python -I` (no cwd, no PYTHONPATH): it imports only
TensorFlow, refuses any import of reelml's packages, and writes each
signature's outputs to JSON. Used by `training.export` after every export, and
by the tests. Usage: verify_export.py EXPORT_DIR INPUTS.json OUTPUTS.json [PARENT_PID]

With PARENT_PID, the check ends itself as soon as that process is gone (the
trainer was killed mid-export): it must not outlive the process that waits for it.
"""

import base64
import importlib.abc
import json
import os
import sys
import threading
import time


class _RefuseOurCode(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("models", "training", "reelml"):
            raise ImportError(f"the export tried to import `{name}`: a SavedModel must load without reelml")
        return None


def _exit_with(parent_pid):
    while os.getppid() == parent_pid:
        time.sleep(0.2)
    os._exit(1)


def main(export_dir, inputs_path, outputs_path, parent_pid=None):
    if parent_pid is not None:
        threading.Thread(target=_exit_with, args=(int(parent_pid),), daemon=True).start()
    sys.meta_path.insert(0, _RefuseOurCode())
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(export_dir)
    requests = json.loads(open(inputs_path).read())
    results = {}
    for endpoint, args in requests.items():
        fn = loaded.signatures[endpoint]
        kwargs = {}
        for name, value in args.items():
            if "bytes" in value:
                kwargs[name] = tf.constant([base64.b64decode(v) for v in value["bytes"]])
            else:
                kwargs[name] = tf.constant(np.asarray(value["values"], dtype=value["dtype"]).reshape(value["shape"]))
        outputs = fn(**kwargs)
        results[endpoint] = {}
        for key, tensor in outputs.items():
            array = tensor.numpy()
            if array.dtype.kind in "SO":
                results[endpoint][key] = [base64.b64encode(v).decode() for v in array.ravel()]
            else:
                results[endpoint][key] = array.tolist()
    with open(outputs_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
