"""The model of a run: `models.MODELS[model.name]` built from the config and the vocabulary."""

from __future__ import annotations

import keras

from models import MODELS
from training.tasks.dialogue.data import Data


def build_model(cfg, data: Data) -> keras.Model:
    """Builds the language model: every `model` key by name, the vocabulary size from the data.

    Args:
        cfg: a dialogue run config (`cfg.model`, `cfg.train.l2`, `cfg.seed`).
        data: the run's `Data`: the vocabulary, plus the unknown token, sizes the embedding and the logits.

    Returns:
        A `keras.Model` mapping int32 tokens `[B, T]` to float32 next-token logits `[B, T, vocab_size]`.
    """
    m = cfg.model
    return MODELS[m.name](vocab_size=len(data.vocabulary) + 1, cell=m.cell, units=m.units, embedding_dim=m.embedding_dim,
                          activation=m.activation, dropout=m.dropout, l2=cfg.train.l2, seed=cfg.seed)
