"""TensorFlow Datasets as a data source, shared by every task that reads one: opening a builder, and one message
for the many ways that fails (no internet, an unknown name, a half-prepared folder)."""

from __future__ import annotations

import contextlib

from training.errors import UserError


def open_builder(d):
    """The tfds builder of `data.tfds_name`, prepared when `data.tfds_download` allows it.

    Args:
        d: the config's `data` section (`tfds_name`, `tfds_data_dir`, `tfds_download`).
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(d.tfds_name, data_dir=d.tfds_data_dir)
    if d.tfds_download:
        builder.download_and_prepare()
    return builder


@contextlib.contextmanager
def tfds_errors(d):
    """Turns what tfds raises inside the block into one `UserError` naming `data.tfds_name` and what to do offline."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # tfds raises many types (registry, download, missing files)
        raise UserError(
            f"data.tfds_name `{d.tfds_name}`: could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "Without internet, point data.tfds_data_dir at a prepared tfds directory and set data.tfds_download: false"
        ) from None
