"""`reelml predict` over an archive: a list of files, one shard of it, one output per file, several at once.

    reelml predict EXPORT --files-from list.txt --shard 3/8 --output-dir out/ [--jobs 2] [--shots] [--format edl]

`--files-from` adds the paths of a text file (one per line; blank lines and `#` comments skipped;
relative paths from the working directory) to the inputs; folders are expanded to their images and
videos. `--shard I/N` keeps every N-th of the sorted files, from the I-th (0-based: SLURM's
`$SLURM_ARRAY_TASK_ID` with `--array=0-(N-1)`, Kubernetes' `$JOB_COMPLETION_INDEX`), so N jobs over
the same list share it out with no overlap and no gap. With `--output-dir`, each file gets its own
output (`DIR/<file name>.<format>`), written whole or not at all; a file whose output is already there
is skipped, so a preempted or killed shard run again picks up where it stopped. `--jobs` files are
predicted at once (threads: decoding and the model both run outside Python's lock). Without
`--output-dir`, the shard's files go to one output (`-o`), as plain `reelml predict` writes.

Progress: one line per file on stderr (cluster logs); on a terminal a bar over the files above them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from training.errors import UserError

MANY_OPTIONS = ("files_from", "shard", "output_dir", "jobs")


def add_many_arguments(parser) -> None:
    """Adds `--files-from`, `--shard`, `--output-dir` and `--jobs` to a task that reads files."""
    parser.add_argument("--files-from", metavar="LIST", help="also predict the files listed in LIST (one path per line)")
    parser.add_argument("--shard", metavar="I/N", help="only every N-th of the sorted files, from the I-th (0-based)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="one output per input file in DIR (--format, default csv); files already done are skipped")
    parser.add_argument("--jobs", type=int, help="with --output-dir: files predicted at once (default 1)")


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> `(I, N)`; a `UserError` naming `--shard` unless 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserError(f"--shard {text}: expected I/N with 0 <= I < N (e.g. 0/4 ... 3/4 for four jobs)")
    return int(match[1]), int(match[2])


def read_file_list(path: str) -> list[str]:
    """The paths listed in `path`, one per line; blank lines and `#` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"--files-from `{path}`: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"--files-from `{path}`: not a UTF-8 text file of paths") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def select_files(inputs, files_from, shard, report) -> tuple[list[Path], list[Path]]:
    """`(all files, this shard's files)`: the inputs and the listed paths, folders expanded, sorted."""
    from training.tasks.video import expand_inputs

    named = list(inputs or []) + (read_file_list(files_from) if files_from else [])
    if not named:
        raise UserError("give files or folders to predict, or --files-from LIST")
    images, videos = expand_inputs(named, report)
    files = sorted(set(images) | set(videos))
    if shard is None:
        return files, files
    index, count = parse_shard(shard)
    return files, files[index::count]


def output_names(files: list[Path], fmt: str) -> dict[Path, str]:
    """`{file: output file name}`: `<name>.<fmt>`, or with a short hash of its path where names collide.

    Computed from the whole list before sharding, so every shard names a file's output the same way."""
    stems: dict[str, int] = {}
    for path in files:
        stems[path.name] = stems.get(path.name, 0) + 1
    names = {}
    for path in files:
        name = path.name
        if stems[name] > 1:
            name = f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}{path.suffix}"
        names[path] = f"{name}.{fmt}"
    return names


def predict_many(task, loaded, metadata, options: dict, args, fmt: str, export_dir: Path) -> int:
    """`reelml predict` with `--files-from`, `--shard`, `--output-dir` or `--jobs` (see the module's docstring)."""
    from training.predict import write_rows

    if "inputs" not in options:
        raise UserError(f"--files-from, --shard and --output-dir take files; {task.name} exports do not read files")
    jobs = options["jobs"] if options["jobs"] is not None else default_jobs()
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: expected at least 1")
    out_dir = options["output_dir"]
    if out_dir is not None and args.output:
        raise UserError("--output and --output-dir: give one (one output for all files, or one per file)")
    rest = {k: v for k, v in options.items() if k not in MANY_OPTIONS and k != "inputs"}
    skipped = []

    def report(path, reason):
        skipped.append(path)
        print(f"skipped {path}: {reason}", file=sys.stderr)

    files, mine = select_files(options["inputs"], options["files_from"], options["shard"], report)
    if out_dir is None:  # the files as one output, in their order; videos predicted `jobs` at once
        from training.tasks.images import VIDEO_EXTENSIONS

        images = [p for p in mine if p.suffix.lower() not in VIDEO_EXTENSIONS]
        units = ([images] if images else []) + [[p] for p in mine if p.suffix.lower() in VIDEO_EXTENSIONS]
        rows = _in_order(lambda unit, report_one: list(task.predict(loaded, metadata, report_one,
                                                                    inputs=[str(p) for p in unit], **rest)),
                         units, jobs, report)
        count = write_rows(rows, Path(args.output) if args.output else None, fmt, task, export_dir, skipped)
        print(f"{count} row(s) from {len(mine)} file(s)" + (f" of {len(files)}" if len(files) != len(mine) else ""),
              file=sys.stderr)
        return 0

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output-dir `{out_dir}`: cannot be made ({e.strerror or e})") from None
    _remove_stale_temps(out_dir)
    names = output_names(files, fmt)
    todo = [p for p in mine if not (out_dir / names[p]).exists()]
    done_before = len(mine) - len(todo)
    print(f"{len(mine)} file(s) in this shard ({len(files)} in all); {done_before} already done, {len(todo)} to predict",
          file=sys.stderr)
    progress = _Progress(len(todo))
    failed = []

    def one(path: Path):
        mine_skipped = []

        def report_one(p, reason):
            mine_skipped.append(p)
            progress.line(f"skipped {p}: {reason}")

        start = time.perf_counter()
        target = out_dir / names[path]
        with progress.bar_for(path):
            rows = task.predict(loaded, metadata, report_one, inputs=[str(path)], **rest)
            count = write_rows(rows, target, fmt, task, export_dir, mine_skipped)
        progress.done(f"{path} -> {target}: {count} row(s) in {time.perf_counter() - start:.1f} s")

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(one, path): path for path in todo}
        for future in concurrent.futures.as_completed(futures):
            try:
                future.result()
            except UserError as e:
                failed.append(futures[future])
                progress.done(f"failed {futures[future]}: {e}")
    progress.close()
    if options["shard"] is not None and not failed:
        index, count = parse_shard(options["shard"])
        manifest = {"shard": f"{index}/{count}", "files": [str(p) for p in mine],
                    "outputs": [str(out_dir / names[p]) for p in mine], "export": str(export_dir)}
        temp = out_dir / f".shard-{index}-of-{count}.json.tmp-{os.getpid()}"
        temp.write_text(json.dumps(manifest, indent=1))
        os.replace(temp, out_dir / f"shard-{index}-of-{count}.json")
    if failed:
        raise UserError(f"{len(failed)} of {len(mine)} file(s) failed (named above); run the same command again to retry them")
    return 0


def several_videos(inputs) -> bool:
    """Whether the named inputs are two or more video files (each may then go at once)."""
    from training.tasks.images import VIDEO_EXTENSIONS

    return sum(Path(p).suffix.lower() in VIDEO_EXTENSIONS for p in inputs or []) >= 2


def default_jobs() -> int:
    """Files predicted at once by default: one per two cores (decoding and the model each use threads), at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _in_order(predict_one, units: list[list[Path]], jobs: int, report):
    """The rows of each unit (the images together, each video alone), `jobs` at once, yielded in order."""
    progress = _Progress(len(units), lines=False)

    def one(unit):
        name = unit[0] if len(unit) == 1 else f"{len(unit)} images"
        with progress.bar_for(name):
            rows = predict_one(unit, report)
        progress.done(str(name))
        return rows

    try:
        if jobs == 1 or len(units) == 1:
            for unit in units:
                yield from one(unit)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for rows in pool.map(one, units):  # in order; later videos go on while earlier ones are written
                yield from rows
    finally:
        progress.close()


def _remove_stale_temps(out_dir: Path) -> None:
    """Removes the half-written outputs (`.NAME.tmp-PID-THREAD`) of processes that are gone (killed or crashed)."""
    # A PID names a process of this machine: an output folder shared by several hosts keeps others' temps.
    for temp in out_dir.glob(".*.tmp-*"):
        match = re.search(r"\.tmp-(\d+)(?:-\d+)?$", temp.name)
        if not match:
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            temp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


class _Progress:
    """One line per finished file (unless `lines` is off); on a terminal, a bar over the files and one per file."""

    def __init__(self, total: int, lines: bool = True):
        self.total, self.finished, self.lines = total, 0, lines
        self.lock = threading.Lock()  # files finish in the pool's threads
        self.bar, self.free_rows, self.next_row = None, [], 1
        if sys.stderr.isatty() and total:
            from tqdm import tqdm  # PySceneDetect's dependency: there whenever reelml is

            self.tqdm = tqdm
            self.bar = tqdm(total=total, unit="file", file=sys.stderr, position=0)

    @contextlib.contextmanager
    def bar_for(self, path: Path):
        """Within the block, the videos this thread decodes move a bar of their own (on a terminal)."""
        from training.tasks.video import progress_hook

        if self.bar is None:
            yield
            return
        with self.lock:
            if self.free_rows:
                row = self.free_rows.pop()
            else:
                row, self.next_row = self.next_row, self.next_row + 1
        bar = self.tqdm(total=0, unit="frame", desc=Path(path).name, file=sys.stderr, position=row, leave=False)

        def hook(_, done, total):
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        try:
            with progress_hook(hook):
                yield
        finally:
            bar.close()
            with self.lock:
                self.free_rows.append(row)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        with self.lock:
            self.finished += 1
            if self.lines or self.bar is None:
                self.line(f"[{self.finished}/{self.total}] {text}")
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
