"""The export: strings in, strings out, with the model, the vocabulary and the sampling loop inside the graph.

Signatures: `generate(prompt, max_tokens, temperature, top_k, seed)` (also
`serving_default`) and `next_token(text, k)`; `export_metadata` records what
`reelml predict` needs to know (tokens, defaults and limits of generation).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.dialogue_rnn import advance, initial_states, next_logits
from training.tasks.dialogue.data import Data
from training.tasks.dialogue.tokens import UNKNOWN, detokenize, tokenize

START = "\n"  # read before every prompt: speeches start on a new line
_NEG = -1e9  # masks a logit (finite: softmax and sampling stay NaN-free)
MAX_TEMPERATURE = 10.0  # as samples.temperature: hotter is noise (and a masked logit / inf would be sampled)


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
    """The `Generator` of a trained model, with the run's vocabulary and generation limit."""
    return Generator(model, data.vocabulary, data.level, cfg.data.lowercase, cfg.samples.max_tokens_limit)


def serving_endpoints(cfg, model, data: Data):
    """What the export tracks (the `Generator`, holding the model and vocabulary) and its signatures.

    `generate` comes first, so it is also `serving_default`.

    Args:
        cfg: a dialogue run config.
        model: the trained model.
        data: the run's `Data` (vocabulary and level).

    Returns:
        `(generator, {signature name: (function, input specs)})`.
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


def export_metadata(cfg, data: Data) -> dict:
    """What `assets.extra/reelml.json` records: tokens, model, and the defaults and limits of generation."""
    return {"level": data.level, "lowercase": cfg.data.lowercase, "vocab_size": len(data.vocabulary) + 1,
            "seq_len": cfg.data.seq_len, "model": cfg.model.model_dump(), "samples": cfg.samples.model_dump(),
            "max_tokens_limit": cfg.samples.max_tokens_limit}
