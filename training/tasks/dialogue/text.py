"""Reading scripts: text files and folders, screenplays, Cornell Movie-Dialogs, tfds text datasets, and the split.

Every source becomes one text, speeches as `NAME: line` (play scripts are kept
as they are: their `NAME:` cues already are). `split_text` then cuts it
contiguously: the last `validation_split`, from a line break on, is validation
and never trained on.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.errors import UserError
from training.tasks.tfds_source import open_builder, tfds_errors

SAMPLE_TEXT = Path(__file__).resolve().parents[3] / "data" / "tiny_shakespeare.txt"
TEXT_EXTENSIONS = (".txt", ".text", ".fountain", ".script", ".md")
CORNELL_SEPARATOR = " +++$+++ "


def read_cornell(path: Path, drop_directions: bool = False) -> str:
    """Cornell Movie-Dialogs `movie_lines.txt` (latin-1, ` +++$+++ ` separated) as `NAME: line` text.

    The file lists lines newest first; they are put back in order, one film
    after another, with a blank line between films.
    """
    rows = []
    with open(path, encoding="latin-1") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split(CORNELL_SEPARATOR)
            if len(fields) != 5 or not re.fullmatch(r"L\d+", fields[0].strip()):
                raise UserError(f"{path}: line {number}: malformed row, expected 5 fields (line ID like L1045, character ID, "
                                f"movie ID, character name, text) separated by {CORNELL_SEPARATOR.strip()!r}")
            line_id, _, movie, name, text = (x.strip() for x in fields)
            film = (0, int(movie[1:]), "") if re.fullmatch(r"m\d+", movie) else (1, 0, movie)
            rows.append((film, int(line_id[1:]), name, _drop_directions(text) if drop_directions else text))
    if not rows:
        raise UserError(f"{path}: no lines in the file (expected Cornell Movie-Dialogs movie_lines.txt rows)")
    rows.sort(key=lambda r: (r[0], r[1]))
    out, film = [], rows[0][0]
    for row_film, _, name, text in rows:
        if row_film != film:
            out.append("")
            film = row_film
        out.append(f"{name}: {text}" if name else text)
    return "\n".join(out) + "\n"


def _drop_directions(text: str) -> str:
    text = re.sub(r"\[[^\]\n]*\]|\([^)\n]*\)", "", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _indent(line: str) -> int:
    return len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())


def _is_cue(line: str, indent: int, next_line: str) -> bool:
    """A character cue: an upper-case name alone on its line, indented or directly followed by its speech."""
    name = re.sub(r"\(.*?\)", "", line).strip()
    if not name or name != name.upper() or not re.search(r"[A-Z]", name) or len(name) > 40:
        return False
    if re.match(r"(INT|EXT|I/E|INT\./EXT)[ .]", name) or name.endswith((":", "TO")):
        return False  # scene headings and transitions (CUT TO:)
    return indent >= 10 or bool(next_line.strip())


def screenplay_to_script(text: str, drop_directions: bool = False) -> str:
    """An indented (or Fountain-style) screenplay rewritten as `NAME: line` text.

    Cues (upper-case names, `(V.O.)`/`(CONT'D)` removed) start a speech whose
    lines are joined; parentheticals stay in the speech and action lines stay
    as they are, unless `drop_directions`.
    """
    lines = text.splitlines()
    out, speaker, speech = [], None, []

    def flush():
        if speaker and speech:
            out.append(f"{speaker}: {' '.join(speech)}")

    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            flush()
            speaker, speech = None, []
            continue
        if speaker is None and _is_cue(line, _indent(raw), lines[i + 1] if i + 1 < len(lines) else ""):
            speaker, speech = re.sub(r"\(.*?\)", "", line).strip(), []
            continue
        if speaker is not None:
            if not (drop_directions and line.startswith("(") and line.endswith(")")):
                speech.append(line)
        elif not drop_directions:
            out.append(line)
    flush()
    return "\n".join(out) + "\n"


def detect_format(text: str) -> str:
    """`auto` (Cornell files are told by their name or separator first): a screenplay by its indented lines, else plain."""
    lines = [line for line in text.splitlines()[:5000] if line.strip()]
    indented = sum(_indent(line) >= 10 for line in lines)
    return "screenplay" if lines and indented >= 0.25 * len(lines) else "plain"


def read_file(path: Path, fmt: str = "auto", encoding: str = "utf-8", drop_directions: bool = False) -> str:
    """One text file as training text, in the given format (`data.format`)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"data.path `{path}`: cannot be read ({e.strerror or e})") from None
    if fmt == "cornell" or (fmt == "auto" and (path.name == "movie_lines.txt" or CORNELL_SEPARATOR.encode() in raw[:2000])):
        return read_cornell(path, drop_directions)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not {encoding} text ({e.reason} at byte {e.start}); set data.encoding (e.g. latin-1)") from None
    except LookupError:
        raise UserError(f"data.encoding `{encoding}`: not a text encoding Python knows") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    fmt = detect_format(text) if fmt == "auto" else fmt
    if fmt == "screenplay":
        return screenplay_to_script(text, drop_directions)
    if drop_directions:
        text = "\n".join(_drop_directions(line) for line in text.split("\n"))
    return text


def _text_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and (p.suffix.lower() in TEXT_EXTENSIONS or p.name == "movie_lines.txt"))
    # The Cornell corpus folder: only movie_lines.txt holds dialogue; its metadata files share the separator.
    files = [p for p in files if p.name == "movie_lines.txt" or CORNELL_SEPARATOR.encode() not in p.read_bytes()[:2000]]
    if not files:
        raise UserError(f"data.path `{root}`: no text files in the folder (expected {', '.join(TEXT_EXTENSIONS)})")
    return files


def _read_tfds(d) -> str:
    with tfds_errors(d):
        builder = open_builder(d)
        if d.tfds_text_key not in builder.info.features:
            raise UserError(f"data.tfds_name `{d.tfds_name}`: no feature `{d.tfds_text_key}` (data.tfds_text_key); "
                            f"it has {list(builder.info.features)}")
        names = list(builder.info.splits) or ["train", "validation", "test"]  # (no split info before it is prepared)
        order = [s for s in ("train", "validation", "test") if s in names] + sorted(set(names) - {"train", "validation", "test"})
        parts = []
        for split in order:  # in order, so the validation text is the end of the work, as in the file
            for example in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
                parts.append(example[d.tfds_text_key].decode("utf-8", errors="replace"))
    return "".join(parts)


def read_text(d) -> tuple[str, str]:
    """The whole text described by `data` and a short description of where it came from."""
    if d.source == "tfds":
        return _read_tfds(d), f"tfds:{d.tfds_name}"
    if d.source == "sample":
        if not SAMPLE_TEXT.is_file():
            raise UserError(f"data.source `sample`: the bundled text {SAMPLE_TEXT} is missing (a reelml checkout ships it); "
                            "use data.source: files with data.path")
        return read_file(SAMPLE_TEXT, "plain"), "sample:tiny_shakespeare"
    path = Path(d.path)
    if not path.exists():
        raise UserError(f"data.path `{path}`: no such file or folder")
    files = _text_files(path) if path.is_dir() else [path]
    return "\n\n".join(read_file(p, d.format, d.encoding, d.stage_directions == "drop") for p in files), str(path)


def split_text(text: str, validation_split: float) -> tuple[str, str]:
    """Contiguous split: validation is the last `validation_split` of the text, starting at a line break if one is near."""
    if validation_split <= 0:
        return text, ""
    cut = int(len(text) * (1 - validation_split))
    line_break = text.rfind("\n", 0, cut)
    if line_break > 0 and cut - line_break < 1000:
        cut = line_break + 1
    return text[:cut], text[cut:]
