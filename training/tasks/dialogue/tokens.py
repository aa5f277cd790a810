"""Tokens: text cut into characters or words by TensorFlow ops (the export runs the same ones), and the vocabulary.

The vocabulary comes from the training text only, most frequent token first;
index 0 is the unknown token (`UNKNOWN`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

UNKNOWN = "[UNK]"


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
