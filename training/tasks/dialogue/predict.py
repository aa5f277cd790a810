"""`reelml predict EXPORT --prompt TEXT... [--next]`: generated text, or the likeliest next tokens, per prompt.

The flags are this task's own (`predict_arguments`); their values are checked here,
with messages that name the flag and the value given.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import tensorflow as tf

from training.errors import UserError
from training.tasks.dialogue.serving import MAX_TEMPERATURE


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the dialogue flags to `reelml predict EXPORT_DIR`.

    Args:
        parser: the `reelml predict` parser (it already has EXPORT_DIR, --output and --format).
    """
    # Positional inputs are no dialogue input: caught to say what to give instead (argparse's "unrecognized
    # arguments" would not).
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--prompt", action="append", metavar="TEXT", help="continue this text (repeatable; \"\" starts a speech)")
    parser.add_argument("--next", action="store_true", help="the k likeliest next tokens of each prompt and their probabilities")
    parser.add_argument("-k", type=int, default=10, help="next tokens for --next (default 10)")
    parser.add_argument("--max-tokens", type=int, help="tokens to generate per prompt (default: the run's samples.max_tokens)")
    parser.add_argument("--temperature", type=float, help="sampling temperature, 0 = always the likeliest token (default: the run's)")
    parser.add_argument("--top-k", type=int, help="sample among the k likeliest tokens (0: all; default: the run's)")
    parser.add_argument("--seed", type=int, help="sampling seed; the same seed gives the same text (default: random, printed)")
    # Accepted and checked as before the flags were per task; every prompt goes to the export in one call.
    parser.add_argument("--batch-size", type=int, default=64, help="accepted for compatibility: all prompts go in one call")


def predict_hint(cfg) -> str:
    """The arguments after `reelml predict EXPORT_DIR` in the summary after `reelml train`."""
    return '--prompt "ROMEO:" --seed 1'


def predict(loaded, metadata, report, *, inputs, prompt, next, k, max_tokens, temperature, top_k, seed, batch_size):
    """Generated text for each `--prompt`, or with `--next` the k likeliest next tokens; one dict per result.

    Args:
        loaded: the export, as `tf.saved_model.load` returned it.
        metadata: its `assets.extra/reelml.json` (the run's sampling defaults and the generation limit).
        report: unused: every prompt can be read.
        inputs: positional arguments, which a dialogue export does not take.
        prompt: list of str, the prompts (`--prompt`, repeatable; "" starts a speech).
        next: bool, list the `k` likeliest next tokens instead of generating.
        k: int, next tokens per prompt for `next` (at least 1).
        max_tokens: int or None, tokens generated per prompt (None: the run's `samples.max_tokens`).
        temperature: float or None, from 0 (always the likeliest token) to 10 (None: the run's).
        top_k: int or None, sample among the k likeliest tokens, 0: all (None: the run's).
        seed: int or None, the sampling seed (None: a random one, printed).
        batch_size: int, checked (at least 1) and otherwise unused.

    Yields:
        `{"prompt", "text", "tokens", "seed"}` per prompt, or with `next`
        `{"prompt", "rank", "token", "probability"}` per prompt and rank.

    Raises:
        UserError: a missing prompt or a flag value out of range, named.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: expected at least 1 (inputs per call of the model)")
    if inputs:
        raise UserError(f"a dialogue export takes --prompt TEXT (repeatable), not inputs ({inputs[0]!r} ...)")
    if not prompt:
        raise UserError('give --prompt TEXT (repeatable; --prompt "" generates from the start of a speech)')
    # Bytes that are not UTF-8 arrive as surrogates: kept as they were, read as U+FFFD by the export.
    raw = [p.encode("utf-8", "surrogateescape") for p in prompt]
    shown = [r.decode("utf-8", "replace") for r in raw]
    prompts = [tf.constant(r) for r in raw]
    if next:
        if k < 1:
            raise UserError(f"-k {k}: expected at least 1 next token")
        out = loaded.signatures["next_token"](text=tf.stack(prompts), k=tf.fill([len(prompts)], min(k, 2**31 - 1)))
        for row, text in enumerate(shown):
            _warn_unknown(text, int(out["unknown_tokens"].numpy()[row]))
            for rank, (token, p) in enumerate(zip(out["token"].numpy()[row], out["probability"].numpy()[row]), 1):
                yield {"prompt": text, "rank": rank, "token": token.decode("utf-8", errors="replace"),
                       "probability": round(float(p), 6)}
        return
    samples = metadata.get("samples", {})
    limit = metadata.get("max_tokens_limit")
    max_tokens = samples.get("max_tokens", 200) if max_tokens is None else max_tokens
    temperature = samples.get("temperature", 0.8) if temperature is None else temperature
    top_k = samples.get("top_k", 0) if top_k is None else top_k
    if max_tokens < 0:
        raise UserError(f"--max-tokens {max_tokens}: expected 0 or more")
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise UserError(f"--temperature {temperature}: expected a number from 0 (always the likeliest token) to "
                        f"{MAX_TEMPERATURE:g}")
    if top_k < 0:
        raise UserError(f"--top-k {top_k}: expected 0 (sample among all tokens) or more")
    if limit is not None and max_tokens > limit:
        print(f"--max-tokens {max_tokens}: this export generates at most {limit} tokens per prompt", file=sys.stderr)
    if seed is not None and not -2**63 <= seed < 2**63:
        raise UserError(f"--seed {seed}: expected an integer from {-2**63} to {2**63 - 1}")
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31))
        print(f"seed {seed} (pass --seed {seed} to get this text again)", file=sys.stderr)
    rows = [len(prompts)]  # every input is per row: the same values for each prompt
    out = loaded.signatures["generate"](
        prompt=tf.stack(prompts), max_tokens=tf.fill(rows, tf.constant(min(max_tokens, 2**31 - 1), tf.int32)),
        temperature=tf.fill(rows, tf.constant(temperature, tf.float32)),
        top_k=tf.fill(rows, tf.constant(min(top_k, 2**31 - 1), tf.int32)), seed=tf.fill(rows, tf.constant(seed, tf.int64)),
    )
    for row, text in enumerate(shown):
        _warn_unknown(text, int(out["unknown_tokens"].numpy()[row]))
        yield {"prompt": text, "text": out["text"].numpy()[row].decode("utf-8", errors="replace"),
               "tokens": int(out["num_tokens"].numpy()[row]), "seed": seed}


def _warn_unknown(prompt, count):
    if count:
        print(f"prompt {prompt!r}: {count} token(s) unknown to the model, read as the unknown token", file=sys.stderr)
