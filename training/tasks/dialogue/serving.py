"""The export: strings in, strings out, with the model, the vocabulary and the sampling loop inside the graph.

Signatures: `generate(prompt, max_tokens, temperature, top_k, seed)` (also
`serving_default`) and `next_token(text, k)`, every input one value per row
`[B]` (so TF Serving's row format `{"instances": [...]}` takes them; one value
is also read as the same for every row); `export_metadata` records what
`reelml predict` needs to know (tokens, defaults and limits of generation).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.dialogue_rnn import advance, initial_states, next_logits
from training.tasks.dialogue.data import Data
from training.tasks.dialogue.tokens import UNKNOWN, detokenize, tokenize
from training.tasks.signatures import per_row

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
        """The k likeliest next tokens of each text and their probabilities (the unknown token left out).

        `k` is per row (`[B]`, or one value for every row), clamped to [1, vocabulary size - 1]. The outputs are
        `[B, largest k]`; a row's columns beyond its own k hold the token "" and the probability 0.
        """
        logits, _, unknown = self._read(text)
        batch = tf.shape(logits)[0]
        k = tf.convert_to_tensor(k, tf.int32)
        width = tf.clip_by_value(tf.reduce_max(k), 1, self.vocab_size - 1)  # one value for no rows still sets it
        k = tf.clip_by_value(per_row(k, batch, "k"), 1, self.vocab_size - 1)
        probabilities = tf.nn.softmax(logits, axis=-1)
        ranked = tf.concat([tf.fill([batch, 1], -1.0), probabilities[:, 1:]], axis=1)
        top = tf.math.top_k(ranked, width)
        inside = tf.range(width)[None, :] < k[:, None]
        return {"token": tf.where(inside, self.to_tokens(tf.cast(top.indices, tf.int64)), ""),
                "probability": tf.where(inside, top.values, 0.0), "unknown_tokens": unknown}

    def generate(self, prompt, max_tokens, temperature, top_k, seed):
        """Continues each prompt by its own `max_tokens` tokens (clamped to [0, max_tokens_limit]), sampled in the graph.

        Every argument after `prompt` is per row (`[B]`, or one value for every row): row i's text depends on row
        i's values only. The loop runs to the largest `max_tokens` and each row keeps its own count. `temperature`
        0 takes the likeliest token each step; it is clamped to [0, MAX_TEMPERATURE] (negative and NaN read as 0,
        +inf as the largest). `top_k` > 0 samples among the k likeliest only. Sampling is stateless and per row:
        the same seed gives the same text, whatever else is in the batch.
        """
        logits, states, unknown = self._read(prompt)
        batch = tf.shape(prompt)[0]
        temperature = per_row(tf.convert_to_tensor(temperature, tf.float32), batch, "temperature")
        temperature = tf.where(tf.math.is_nan(temperature), 0.0, tf.clip_by_value(temperature, 0.0, MAX_TEMPERATURE))
        steps = tf.clip_by_value(per_row(tf.convert_to_tensor(max_tokens, tf.int32), batch, "max_tokens"), 0,
                                 self.max_tokens_limit)
        longest = tf.maximum(tf.reduce_max(steps), 0)  # no rows: 0
        k = tf.clip_by_value(per_row(tf.convert_to_tensor(top_k, tf.int32), batch, "top_k"), 0, self.vocab_size)
        widest = tf.maximum(tf.reduce_max(k), 1)
        any_top_k, any_sampled = tf.reduce_any(k > 0), tf.reduce_any(temperature > 0)
        row_keys = _row_keys(per_row(tf.cast(seed, tf.int64), batch, "seed"))
        token_keys = _mix32(_xor(tf.range(self.vocab_size, dtype=tf.int64), 0x2545F491))
        step_keys = _mix32(_mix32(_xor(tf.range(longest, dtype=tf.int64), 0x1B56C4E9)))  # hashed once, not per step
        not_unknown = tf.concat([[_NEG], tf.zeros([self.vocab_size - 1])], axis=0)

        def pick(i, logits):
            logits = logits + not_unknown
            scaled = logits / tf.maximum(temperature, 1e-6)[:, None]
            def only_top_k():
                kth = tf.gather(tf.math.top_k(scaled, widest).values, tf.maximum(k, 1) - 1, batch_dims=1)
                return tf.where((k > 0)[:, None] & (scaled < kth[:, None]), _NEG, scaled)

            def sample():
                masked = tf.cond(any_top_k, only_top_k, lambda: scaled)
                noise = _gumbel(_xor(row_keys, step_keys[i]), token_keys)
                return tf.argmax(masked + noise, axis=-1, output_type=tf.int32)

            greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
            # (the conds skip work no row needs: they change no row's result)
            return tf.cond(any_sampled, lambda: tf.where(temperature > 0, sample(), greedy), lambda: greedy)

        def body(i, logits, states, out):
            token = pick(i, logits)
            output, states = advance(self.model, token, states)
            return i + 1, next_logits(self.model, output), states, out.write(i, token)

        out = tf.TensorArray(tf.int32, size=longest, element_shape=tf.TensorShape([None]))
        _, _, _, out = tf.while_loop(lambda i, *_: i < longest, body, (tf.constant(0), logits, states, out))
        # (stacking an empty TensorArray of unknown element shape fails: no tokens is its own case)
        ids = tf.cond(longest > 0, lambda: tf.transpose(out.stack()), lambda: tf.zeros([batch, 0], tf.int32))
        tokens = tf.RaggedTensor.from_tensor(self.to_tokens(tf.cast(ids, tf.int64)), lengths=steps)  # each row's own
        return {"text": detokenize(tokens, self.level), "num_tokens": steps, "unknown_tokens": unknown}


# Sampling draws its noise from a counter-based hash of (row's seed, step, token), one 32-bit hash of the three keys
# xor-ed (each key itself hashed once, outside the loop): each row's draws depend on its own seed only (tf.random's stateless ops take one seed per call, for the whole batch). Integers stay below 2**49 in
# int64, so no operation overflows and every device gives the same bits.
_LOW32 = 0xFFFFFFFF


_and, _xor, _shift = tf.bitwise.bitwise_and, tf.bitwise.bitwise_xor, tf.bitwise.right_shift


def _mul32(x, c):
    """`(x * c) mod 2**32` for int64 `x` in [0, 2**32) and a constant `c` < 2**32, without overflow."""
    return _and(x * (c & 0xFFFF) + _and(x * (c >> 16), 0xFFFF) * 65536, _LOW32)


def _mix32(x):
    """A 32-bit integer hash (lowbias32, from Chris Wellons' hash-prospector) of int64 `x` in [0, 2**32)."""
    x = _xor(x, _shift(x, 16))
    x = _mul32(x, 0x7FEB352D)
    x = _xor(x, _shift(x, 15))
    x = _mul32(x, 0x846CA68B)
    return _xor(x, _shift(x, 16))


def _row_keys(seed):
    """int64 seeds `[B]` -> 32-bit keys `[B]` (both halves of each seed mixed in)."""
    high = _and(_shift(seed, tf.constant(32, tf.int64)), _LOW32)
    return _mix32(_xor(_mix32(_xor(high, 0x68E31DA4)), _and(seed, _LOW32)))


def _gumbel(keys, token_keys):
    """Gumbel noise `[B, V]` for one step (`keys`: each row's key for this step): adding it to logits and taking
    the argmax samples their softmax."""
    bits = _mix32(_xor(keys[:, None], token_keys[None, :]))
    uniform = (tf.cast(_shift(bits, 8), tf.float32) + 0.5) / 2.0**24  # 24 bits: exact in float32, inside (0, 1)
    return -tf.math.log(-tf.math.log(uniform))


def make_generator(cfg, model, data: Data) -> Generator:
    """The `Generator` of a trained model (its plain language model, when trained stateful), with the run's
    vocabulary and generation limit."""
    from training.tasks.dialogue.model import language_model

    return Generator(language_model(model), data.vocabulary, data.level, cfg.data.lowercase, cfg.samples.max_tokens_limit)


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
                                       tf.TensorSpec([None], tf.int32, name="max_tokens"),
                                       tf.TensorSpec([None], tf.float32, name="temperature"),
                                       tf.TensorSpec([None], tf.int32, name="top_k"),
                                       tf.TensorSpec([None], tf.int64, name="seed")]),
        "next_token": (served.next_token, [text, tf.TensorSpec([None], tf.int32, name="k")]),
    }


def verification_inputs(cfg, data: Data):
    """Prompts as each signature takes them: configured ones, an empty one and one of unknown characters."""
    prompts = [p.encode("utf-8") for p in cfg.samples.prompts[:2]] + [b"", "\u2603\u00e9\u4e2d".encode("utf-8")]
    n = len(prompts)  # every input per row (TF Serving's row format needs it); rows differ, to check they stay apart
    return {
        "generate": {"prompt": prompts, "max_tokens": np.array([40, 12, 40, 0][:n], np.int32),
                     "temperature": np.array([0.8, 0.0, 1.2, 0.8][:n], np.float32), "top_k": np.array([0, 0, 5, 0][:n], np.int32),
                     "seed": np.array([7, 7, 8, 9][:n], np.int64)},
        "next_token": {"text": prompts, "k": np.array([5, 3, 5, 1][:n], np.int32)},
    }


def export_metadata(cfg, data: Data) -> dict:
    """What `assets.extra/reelml.json` records: tokens, model, and the defaults and limits of generation."""
    return {"level": data.level, "lowercase": cfg.data.lowercase, "vocab_size": len(data.vocabulary) + 1,
            "seq_len": cfg.data.seq_len, "model": cfg.model.model_dump(), "samples": cfg.samples.model_dump(),
            "max_tokens_limit": cfg.samples.max_tokens_limit}
