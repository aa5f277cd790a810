"""Folders that appear whole or not at all.

Generated sample data is written by whichever process gets there first, and in
a multi-worker run every worker gets there at once: each builds its own scratch
folder and renames it into place; the first rename wins and the others are
dropped, so no reader ever sees a half-written file.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def building(final: Path):
    """Yields a scratch folder beside `final`; when the block ends, it becomes `final` (unless another
    process finished `final` first). On an error the scratch folder is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
        try:
            os.rename(scratch, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Writes a file whole or not at all: a temp file beside it (this process's own), then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)
