"""Dialogue: a character- or word-level language model of scripts. Everything the task needs around its model.

- data: plain text files and folders (play scripts with `NAME:` cues as they
  are), indented screenplays (rewritten as `NAME: line`), Cornell
  Movie-Dialogs `movie_lines.txt`, tfds text datasets such as
  `tiny_shakespeare`, or the bundled Tiny Shakespeare -> one text -> a
  contiguous split: the last `validation_split` of it, from a line break on,
  is validation and never trained on;
- tokens: characters or words, cut by TensorFlow ops that the export runs too;
  the vocabulary comes from the training text only, index 0 is the unknown token;
- training windows: `seq_len` tokens and their next tokens, cut at a new random
  offset and shuffled every epoch (seeded);
- loss (cross-entropy in nats per token) and the validation perplexity and bits
  per character, as Keras metrics;
- serving signatures, strings in and strings out: `generate(prompt, max_tokens,
  temperature, top_k, seed)` with the sampling loop inside the graph, and
  `next_token(text, k)`;
- text samples from fixed prompts logged to MLflow after each epoch;
- the report: validation loss by position in the window;
- prediction for `reelml predict EXPORT --prompt ... [--next]`.

Batches are `(tokens int32 [B, T], next tokens int32 [B, T])`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models import MODELS
from models.dialogue_rnn import advance, initial_states, next_logits
from training.epochs import epoch_seeds
from training.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
SAMPLE_TEXT = Path(__file__).resolve().parents[2] / "data" / "tiny_shakespeare.txt"
TEXT_EXTENSIONS = (".txt", ".text", ".fountain", ".script", ".md")
CORNELL_SEPARATOR = " +++$+++ "
UNKNOWN = "[UNK]"
START = "\n"  # read before every prompt: speeches start on a new line
_NEG = -1e9  # masks a logit (finite: softmax and sampling stay NaN-free)
MAX_TEMPERATURE = 10.0  # as samples.temperature: hotter is noise (and a masked logit / inf would be sampled)


# --------------------------------------------------------------------------- reading


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
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(d.tfds_name, data_dir=d.tfds_data_dir)
        if d.tfds_download:
            builder.download_and_prepare()
        if d.tfds_text_key not in builder.info.features:
            raise UserError(f"data.tfds_name `{d.tfds_name}`: no feature `{d.tfds_text_key}` (data.tfds_text_key); "
                            f"it has {list(builder.info.features)}")
        names = list(builder.info.splits) or ["train", "validation", "test"]  # (no split info before it is prepared)
        order = [s for s in ("train", "validation", "test") if s in names] + sorted(set(names) - {"train", "validation", "test"})
        parts = []
        for split in order:  # in order, so the validation text is the end of the work, as in the file
            for example in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
                parts.append(example[d.tfds_text_key].decode("utf-8", errors="replace"))
    except UserError:
        raise
    except Exception as e:  # tfds raises many types (registry, download, missing files)
        raise UserError(
            f"data.tfds_name `{d.tfds_name}`: could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "Without internet, point data.tfds_data_dir at a prepared tfds directory and set data.tfds_download: false"
        ) from None
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


# --------------------------------------------------------------------------- tokens


def tokenize(text, level: str, lowercase: bool = False) -> tf.RaggedTensor:
    """Text `[B]` -> tokens `[B, None]` (strings), with the ops the export runs too.

    `char`: one token per Unicode character (invalid UTF-8 becomes U+FFFD).
    `word`: runs of letters, digits and apostrophes; every other symbol and
    every line break is a token; spaces and tabs only separate.
    """
    text = tf.convert_to_tensor(text, tf.string)
    if lowercase:
        text = tf.strings.lower(text, encoding="utf-8")
    if level == "char":
        return tf.strings.unicode_split(text, "UTF-8", errors="replace")
    text = tf.strings.regex_replace(text, r"[ \t\r\f\v]+", " ")
    text = tf.strings.regex_replace(text, r"([^\pL\pN' ])", " \\1 ")
    tokens = tf.strings.split(text, sep=" ")
    return tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)


def detokenize(tokens, level: str):
    """Tokens `[B, N]` (strings) -> text `[B]`: characters joined; words spaced, without spaces before
    punctuation or around line breaks."""
    if level == "char":
        return tf.strings.reduce_join(tokens, axis=-1)
    text = tf.strings.reduce_join(tokens, axis=-1, separator=" ")
    text = tf.strings.regex_replace(text, r" ?\n ?", "\n")
    text = tf.strings.regex_replace(text, r" ([.,;:!?)\]}])", "\\1")
    return tf.strings.regex_replace(text, r"([(\[{]) ", "\\1")


def build_vocabulary(tokens: np.ndarray, max_vocab=None, min_count=1) -> tuple[list[str], np.ndarray]:
    """Vocabulary of training tokens (bytes), most frequent first; returns (tokens, ids with 0 = unknown).

    `max_vocab` counts the unknown token: at most `max_vocab - 1` tokens are kept.
    """
    uniques, inverse, counts = np.unique(tokens, return_inverse=True, return_counts=True)
    order = np.lexsort((uniques, -counts))
    keep = order[counts[order] >= min_count]
    if max_vocab is not None:
        keep = keep[: max_vocab - 1]
    index = np.zeros(len(uniques), np.int32)
    index[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return [uniques[i].decode("utf-8") for i in keep], index[inverse]


def encode(tokens: np.ndarray, vocabulary: list[str]) -> np.ndarray:
    """Token strings (bytes) -> ids with the given vocabulary (0 = unknown)."""
    index = {t.encode("utf-8"): i for i, t in enumerate(vocabulary, 1)}
    return np.fromiter((index.get(t, 0) for t in tokens), np.int32, len(tokens))


# --------------------------------------------------------------------------- tf.data


def train_dataset(ids: np.ndarray, seq_len: int, batch_size: int, seed: int) -> tf.data.Dataset:
    """Training windows: `seq_len` tokens and their next tokens, non-overlapping, from a new random offset
    and in a new order every epoch (the same ones for an epoch redone after a restart)."""
    windows = len(ids) // seq_len - 1
    tokens = tf.constant(ids)
    positions = tf.range(seq_len + 1, dtype=tf.int64)

    def cut(starts):
        w = tf.gather(tokens, starts[:, None] + positions[None, :])
        return w[:, :-1], w[:, 1:]

    def epoch(epoch_seed):
        offset = tf.random.stateless_uniform([], tf.stack([epoch_seed, 0]), maxval=seq_len, dtype=tf.int64)
        starts = offset + tf.range(windows, dtype=tf.int64) * seq_len
        starts = tf.random.experimental.stateless_shuffle(starts, tf.stack([epoch_seed, 1]))
        return tf.data.Dataset.from_tensor_slices(starts).batch(batch_size, drop_remainder=True).map(cut, num_parallel_calls=AUTOTUNE)

    return epoch_seeds(seed).flat_map(epoch).prefetch(AUTOTUNE)


def eval_windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation windows: consecutive, non-overlapping; a text shorter than one window is one shorter window."""
    length = min(seq_len, len(ids) - 1)
    n = (len(ids) - 1) // length
    x = ids[: n * length].reshape(n, length)
    y = ids[1: n * length + 1].reshape(n, length)
    return x, y


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
    """The task's datasets, batched, and what the run and the export need to know about them."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    train_steps: int  # batches per epoch
    vocabulary: list[str]  # index i + 1 is vocabulary[i]; 0 is the unknown token
    level: str
    val_windows: tuple | None  # (x, y) numpy, for the report
    fingerprint: str  # hash of the text, the split and the tokens
    counts: dict


def load_data(cfg, run_dir) -> Data:
    """Reads the text described by `cfg.data`, splits it, builds the vocabulary from the training part and the datasets."""
    d = cfg.data
    text, origin = read_text(d)
    if d.max_chars is not None:
        text = text[: d.max_chars]
    if not text.strip():
        raise UserError(f"data ({origin}): the text is empty")
    train_text, val_text = split_text(text, d.validation_split)
    train_tokens = tokenize([train_text], d.level, d.lowercase).flat_values.numpy()
    vocabulary, train_ids = build_vocabulary(train_tokens, d.max_vocab, d.min_count)
    val_ids = encode(tokenize([val_text], d.level, d.lowercase).flat_values.numpy(), vocabulary) if val_text else np.zeros(0, np.int32)

    windows = len(train_ids) // d.seq_len - 1
    if windows < d.batch_size:
        raise UserError(f"data ({origin}): the training text has {len(train_ids)} {d.level} tokens, fewer than one batch "
                        f"(data.batch_size {d.batch_size} windows of data.seq_len {d.seq_len} tokens, plus one window); "
                        "lower them or give more text")
    validation = None
    val_windows = None
    if len(val_ids) >= 2:
        val_windows = eval_windows(val_ids, d.seq_len)
        validation = tf.data.Dataset.from_tensor_slices(val_windows).batch(d.batch_size).cache().prefetch(AUTOTUNE)
    counts = {"chars": len(text), "train_chars": len(train_text), "validation_chars": len(val_text),
              "train_tokens": len(train_ids), "validation_tokens": len(val_ids), "vocab_size": len(vocabulary) + 1,
              "train_unknown_tokens": int((train_ids == 0).sum()), "validation_unknown_tokens": int((val_ids == 0).sum())}
    digest = hashlib.sha256()
    digest.update(f"{d.level}:{d.lowercase}:{len(train_text)}:".encode())
    digest.update(text.encode("utf-8", errors="replace"))
    digest.update("\x00".join(vocabulary).encode())
    print(f"Dialogue data ({origin}): {len(text):,} characters; {len(train_ids):,} training and {len(val_ids):,} validation "
          f"{d.level} tokens; vocabulary {len(vocabulary) + 1} (unknown token included)", flush=True)
    return Data(
        train=train_dataset(train_ids, d.seq_len, d.batch_size, cfg.seed),
        validation=validation,
        test=None,
        train_steps=windows // d.batch_size,
        vocabulary=vocabulary,
        level=d.level,
        val_windows=val_windows,
        fingerprint=digest.hexdigest()[:16],
        counts=counts,
    )


def data_tags(data: Data) -> dict:
    """Run tags describing the data: characters, tokens per split, vocabulary size, unknown tokens."""
    return {f"data.{k}": str(v) for k, v in data.counts.items()}


def export_metadata(cfg, data: Data) -> dict:
    """What `assets.extra/reelml.json` records: tokens, model, and the defaults and limits of generation."""
    return {"level": data.level, "lowercase": cfg.data.lowercase, "vocab_size": len(data.vocabulary) + 1,
            "seq_len": cfg.data.seq_len, "model": cfg.model.model_dump(), "samples": cfg.samples.model_dump(),
            "max_tokens_limit": cfg.samples.max_tokens_limit}


# --------------------------------------------------------------------------- model, loss, metrics


def build_model(cfg, data: Data) -> keras.Model:
    params = cfg.model.model_dump(exclude={"name"})
    return MODELS[cfg.model.name](vocab_size=len(data.vocabulary) + 1, l2=cfg.train.l2, seed=cfg.seed, **params)


def make_loss(cfg, data: Data):
    """Cross-entropy of the next token, in nats, averaged over each window's positions (one value per window)."""

    def loss(next_tokens, logits):
        per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(next_tokens, tf.int32), tf.cast(logits, tf.float32))
        return tf.reduce_mean(per_token, axis=-1)

    return loss


class TokenCrossEntropy(keras.metrics.Metric):
    """Perplexity (`exp` of the mean cross-entropy per token) or bits per token (`nats / ln 2`).

    `update_state(next_tokens [B, T], logits [B, T, V])`; every token weighs the same.
    """

    def __init__(self, kind: str, name=None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        self.kind = kind
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y_true, tf.int32), tf.cast(y_pred, tf.float32))
        self.total.assign_add(tf.reduce_sum(nats))
        self.count.assign_add(tf.cast(tf.size(nats), tf.float32))

    def result(self):
        mean = self.total / tf.maximum(self.count, 1.0)
        return tf.exp(mean) if self.kind == "perplexity" else mean / tf.math.log(2.0)


def make_metrics(cfg, data: Data):
    return []  # the training perplexity is exp(loss): no second softmax per step


def make_eval_metrics(cfg, data: Data):
    metrics = [TokenCrossEntropy("perplexity")]
    if data.level == "char":
        metrics.append(TokenCrossEntropy("bits", name="bits_per_char"))
    return metrics


# --------------------------------------------------------------------------- serving


class Generator(keras.layers.Layer):
    """The served language model: text in, text out; the model, the vocabulary and the sampling loop inside.

    Every prompt is read after a line break (`START`), as if it began a speech;
    so an empty prompt generates from the start of a speech. Prompt tokens not
    in the vocabulary are read as the unknown token (and counted); the unknown
    token is never generated nor proposed as a next token.
    """

    def __init__(self, model, vocabulary, level, lowercase=False, max_tokens_limit=5000):
        super().__init__(name="dialogue_generator")
        self.model, self.level, self.lowercase = model, level, lowercase
        self.max_tokens_limit = max_tokens_limit
        self.vocab_size = len(vocabulary) + 1
        self.to_ids = keras.layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=1, oov_token=UNKNOWN,
                                                mask_token=None, name="to_ids")
        self.to_tokens = keras.layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=1, oov_token=UNKNOWN,
                                                   mask_token=None, invert=True, name="to_tokens")
        self.to_ids(tf.constant([""]))  # build the lookup layers (ExportArchive refuses unbuilt ones)
        self.to_tokens(tf.constant([0], tf.int64))
        self.start_id = vocabulary.index(START) + 1 if START in vocabulary else 1
        self.built = True

    def _read(self, text):
        """Reads prompts `[B]`: the logits of the next token `[B, V]`, the states, and unknown tokens per prompt."""
        tokens = tokenize(text, self.level, self.lowercase)
        ids = tokens.with_flat_values(tf.cast(self.to_ids(tokens.flat_values), tf.int32))
        unknown = tf.reduce_sum(tf.cast(tf.equal(ids, 0), tf.int32), axis=1)
        batch = tf.shape(text)[0]
        ids = tf.concat([tf.fill([batch, 1], tf.constant(self.start_id, tf.int32)), ids.to_tensor(0)], axis=1)
        lengths = tf.cast(tokens.row_lengths(), tf.int32) + 1
        states = initial_states(self.model, batch)
        output, states = advance(self.model, ids[:, 0], states)  # the start token: every prompt has it

        def body(t, output, states):
            new_output, new_states = advance(self.model, ids[:, t], states)
            live = (t < lengths)[:, None]  # shorter prompts keep their state once read

            def keep(new, old):
                return tf.where(live, new, old)

            return t + 1, keep(new_output, output), tf.nest.map_structure(keep, new_states, states)

        _, output, states = tf.while_loop(lambda t, *_: t < tf.shape(ids)[1], body, (tf.constant(1), output, states))
        return next_logits(self.model, output), states, unknown

    def next_token(self, text, k):
        """The k likeliest next tokens of each text and their probabilities (the unknown token left out)."""
        logits, _, unknown = self._read(text)
        probabilities = tf.nn.softmax(logits, axis=-1)
        ranked = tf.concat([tf.fill([tf.shape(logits)[0], 1], -1.0), probabilities[:, 1:]], axis=1)
        top = tf.math.top_k(ranked, tf.clip_by_value(k, 1, self.vocab_size - 1))
        return {"token": self.to_tokens(tf.cast(top.indices, tf.int64)), "probability": top.values,
                "unknown_tokens": unknown}

    def generate(self, prompt, max_tokens, temperature, top_k, seed):
        """Continues each prompt by `max_tokens` tokens (clamped to [0, max_tokens_limit]), sampled in the graph.

        `temperature` 0 takes the likeliest token each step; it is clamped to
        [0, MAX_TEMPERATURE] (negative and NaN read as 0, +inf as the largest).
        `top_k` > 0 samples among the k likeliest only. Sampling is stateless:
        the same seed gives the same text.
        """
        temperature = tf.convert_to_tensor(temperature, tf.float32)
        temperature = tf.where(tf.math.is_nan(temperature), 0.0, tf.clip_by_value(temperature, 0.0, MAX_TEMPERATURE))
        logits, states, unknown = self._read(prompt)
        steps = tf.clip_by_value(max_tokens, 0, self.max_tokens_limit)
        batch = tf.shape(prompt)[0]
        not_unknown = tf.concat([[_NEG], tf.zeros([self.vocab_size - 1])], axis=0)
        seed = tf.cast(seed, tf.int64)
        k = tf.clip_by_value(top_k, 0, self.vocab_size)

        def pick(i, logits):
            logits = logits + not_unknown
            scaled = logits / tf.maximum(temperature, 1e-6)
            scaled = tf.cond(
                k > 0, lambda: tf.where(scaled < tf.math.top_k(scaled, tf.maximum(k, 1)).values[:, -1:], _NEG, scaled),
                lambda: scaled,
            )
            sampled = tf.random.stateless_categorical(scaled, 1, tf.stack([seed, tf.cast(i, tf.int64)]), dtype=tf.int32)[:, 0]
            return tf.where(temperature > 0, sampled, tf.argmax(logits, axis=-1, output_type=tf.int32))

        def body(i, logits, states, out):
            token = pick(i, logits)
            output, states = advance(self.model, token, states)
            return i + 1, next_logits(self.model, output), states, out.write(i, token)

        out = tf.TensorArray(tf.int32, size=steps, element_shape=tf.TensorShape([None]))
        _, _, _, out = tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), logits, states, out))
        # (stacking an empty TensorArray of unknown element shape fails: no tokens is its own case)
        ids = tf.cond(steps > 0, lambda: tf.transpose(out.stack()), lambda: tf.zeros([batch, 0], tf.int32))
        text = detokenize(self.to_tokens(tf.cast(ids, tf.int64)), self.level)
        return {"text": text, "num_tokens": tf.fill([batch], steps), "unknown_tokens": unknown}


def make_generator(cfg, model, data: Data) -> Generator:
    return Generator(model, data.vocabulary, data.level, cfg.data.lowercase, cfg.samples.max_tokens_limit)


def serving_endpoints(cfg, model, data: Data):
    """What the export tracks (the `Generator`, holding the model and vocabulary) and its signatures.

    `generate` comes first, so it is also `serving_default`.
    """
    served = make_generator(cfg, model, data)
    text = tf.TensorSpec([None], tf.string, name="text")
    return served, {
        "generate": (served.generate, [tf.TensorSpec([None], tf.string, name="prompt"),
                                       tf.TensorSpec([], tf.int32, name="max_tokens"),
                                       tf.TensorSpec([], tf.float32, name="temperature"),
                                       tf.TensorSpec([], tf.int32, name="top_k"),
                                       tf.TensorSpec([], tf.int64, name="seed")]),
        "next_token": (served.next_token, [text, tf.TensorSpec([], tf.int32, name="k")]),
    }


def verification_inputs(cfg, data: Data):
    """Prompts as each signature takes them: configured ones, an empty one and one of unknown characters."""
    prompts = [p.encode("utf-8") for p in cfg.samples.prompts[:2]] + [b"", "\u2603\u00e9\u4e2d".encode("utf-8")]
    return {
        "generate": {"prompt": prompts, "max_tokens": np.int32(40), "temperature": np.float32(0.8),
                     "top_k": np.int32(0), "seed": np.int64(7)},
        "next_token": {"text": prompts, "k": np.int32(5)},
    }


class SampleLogger(keras.callbacks.Callback):
    """Logs text generated from `samples.prompts` to MLflow as `samples/epoch_NNN.txt` after each epoch."""

    def __init__(self, cfg, model, data: Data, tracker):
        super().__init__()
        self.cfg, self.tracker = cfg, tracker
        self.generator = make_generator(cfg, model, data)
        self._generate = tf.function(self.generator.generate)

    def samples(self, seed: int) -> str:
        s = self.cfg.samples
        out = self._generate(tf.constant(s.prompts), tf.constant(s.max_tokens, tf.int32),
                             tf.constant(s.temperature, tf.float32), tf.constant(s.top_k, tf.int32), tf.constant(seed, tf.int64))
        texts = [t.decode("utf-8", errors="replace") for t in out["text"].numpy()]
        sep = " " if self.generator.level == "word" else ""
        return "\n\n".join(f"--- prompt {p!r}\n{p}{sep}{t}" for p, t in zip(s.prompts, texts)) + "\n"

    def on_epoch_end(self, epoch, logs=None):
        s = self.cfg.samples
        if not s.prompts or ((epoch + 1) % s.every_epochs and epoch + 1 != self.cfg.train.epochs):
            return
        header = f"epoch {epoch + 1}, temperature {s.temperature}, top_k {s.top_k}, seed {self.cfg.seed}, " + \
            ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if "loss" in k or "perplexity" in k or "bits" in k)
        self.tracker.log_text(header + "\n\n" + self.samples(self.cfg.seed), f"samples/epoch_{epoch + 1:03d}.txt")


def epoch_callbacks(cfg, model, data: Data, tracker) -> list:
    """Callbacks the training loop runs after each epoch: the generated samples (where the run is tracked: the chief)."""
    return [SampleLogger(cfg, model, data, tracker)] if cfg.samples.prompts and tracker.enabled else []


# --------------------------------------------------------------------------- report


def report(cfg, model, data: Data):
    """Validation loss by position in the window: how much the model gains from context."""
    if data.val_windows is None:
        return {}, {}
    x, y = data.val_windows
    forward = tf.function(lambda t: model(t, training=False))
    totals = np.zeros(x.shape[1])
    for start in range(0, len(x), cfg.data.batch_size):
        logits = forward(tf.constant(x[start:start + cfg.data.batch_size]))
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(y[start:start + cfg.data.batch_size], tf.cast(logits, tf.float32))
        totals += np.asarray(nats).sum(axis=0)
    by_position = totals / len(x)
    half = len(by_position) // 2
    metrics = {"val_loss_second_half": float(by_position[half:].mean())}
    return metrics, {"loss_by_position.png": loss_by_position_figure(by_position, data.level)}


def loss_by_position_figure(by_position, level):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(by_position) + 1), by_position)
    ax.set_xlabel(f"position in the window ({level} tokens of context)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"mean {by_position.mean():.3f}, second half {by_position[len(by_position) // 2:].mean():.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- predict


def csv_fields(row) -> list[str]:
    return list(row)


def predict(loaded, metadata, args, report):
    """Generated text for each `--prompt`, or with `--next` the k likeliest next tokens; one dict per result."""
    if args.inputs:
        raise UserError(f"a dialogue export takes --prompt TEXT (repeatable), not inputs ({args.inputs[0]!r} ...)")
    if not args.prompt:
        raise UserError('give --prompt TEXT (repeatable; --prompt "" generates from the start of a speech)')
    # Bytes that are not UTF-8 arrive as surrogates: kept as they were, read as U+FFFD by the export.
    raw = [p.encode("utf-8", "surrogateescape") for p in args.prompt]
    shown = [r.decode("utf-8", "replace") for r in raw]
    prompts = [tf.constant(r) for r in raw]
    if args.next:
        if args.k < 1:
            raise UserError(f"-k {args.k}: expected at least 1 next token")
        out = loaded.signatures["next_token"](text=tf.stack(prompts), k=tf.constant(min(args.k, 2**31 - 1), tf.int32))
        for row, prompt in enumerate(shown):
            _warn_unknown(prompt, int(out["unknown_tokens"].numpy()[row]))
            for rank, (token, p) in enumerate(zip(out["token"].numpy()[row], out["probability"].numpy()[row]), 1):
                yield {"prompt": prompt, "rank": rank, "token": token.decode("utf-8", errors="replace"),
                       "probability": round(float(p), 6)}
        return
    samples = metadata.get("samples", {})
    limit = metadata.get("max_tokens_limit")
    max_tokens = samples.get("max_tokens", 200) if args.max_tokens is None else args.max_tokens
    temperature = samples.get("temperature", 0.8) if args.temperature is None else args.temperature
    top_k = samples.get("top_k", 0) if args.top_k is None else args.top_k
    if max_tokens < 0:
        raise UserError(f"--max-tokens {max_tokens}: expected 0 or more")
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise UserError(f"--temperature {temperature}: expected a number from 0 (always the likeliest token) to "
                        f"{MAX_TEMPERATURE:g}")
    if top_k < 0:
        raise UserError(f"--top-k {top_k}: expected 0 (sample among all tokens) or more")
    if limit is not None and max_tokens > limit:
        print(f"--max-tokens {max_tokens}: this export generates at most {limit} tokens per prompt", file=sys.stderr)
    if args.seed is not None and not -2**63 <= args.seed < 2**63:
        raise UserError(f"--seed {args.seed}: expected an integer from {-2**63} to {2**63 - 1}")
    seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(0, 2**31))
    if args.seed is None:
        print(f"seed {seed} (pass --seed {seed} to get this text again)", file=sys.stderr)
    out = loaded.signatures["generate"](
        prompt=tf.stack(prompts), max_tokens=tf.constant(min(max_tokens, 2**31 - 1), tf.int32),
        temperature=tf.constant(temperature, tf.float32), top_k=tf.constant(min(top_k, 2**31 - 1), tf.int32),
        seed=tf.constant(seed, tf.int64),
    )
    for row, prompt in enumerate(shown):
        _warn_unknown(prompt, int(out["unknown_tokens"].numpy()[row]))
        yield {"prompt": prompt, "text": out["text"].numpy()[row].decode("utf-8", errors="replace"),
               "tokens": int(out["num_tokens"].numpy()[row]), "seed": seed}


def _warn_unknown(prompt, count):
    if count:
        print(f"prompt {prompt!r}: {count} token(s) unknown to the model, read as the unknown token", file=sys.stderr)
