"""The dialogue model's schema: `data` (scripts, tokens, windows), `model` and `samples`."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from training.config.sections import RunConfig, Section


class DialogueData(Section):
    """Where the scripts come from, how they are read, tokenised and cut into training windows."""

    source: Literal["sample", "files", "tfds"] = Field(
        "sample",
        description="`sample`: the bundled public-domain Tiny Shakespeare (`data/tiny_shakespeare.txt`, offline); `files`: "
        "a text file or a folder of them; `tfds`: a TensorFlow Datasets text name such as `tiny_shakespeare`.",
    )
    path: Optional[str] = Field(
        None, description="`files`: a text file, or a folder whose text files are read in name order and joined."
    )
    format: Literal["auto", "plain", "screenplay", "cornell"] = Field(
        "auto",
        description="`plain`: as written (play scripts with `NAME:` cues included); `screenplay`: indented screenplay "
        "layout rewritten as `NAME: line`; `cornell`: Cornell Movie-Dialogs `movie_lines.txt`; `auto`: from the file.",
    )
    encoding: str = Field("utf-8", min_length=1, description="Text encoding of `files` (Cornell Movie-Dialogs is always read as latin-1).")
    stage_directions: Literal["keep", "drop"] = Field(
        "keep", description="`drop` removes bracketed and parenthesised directions, and screenplay action lines: dialogue only."
    )
    tfds_name: Optional[str] = Field("tiny_shakespeare", description="`tfds`: dataset name (needs internet unless prepared).")
    tfds_data_dir: Optional[str] = Field(None, description="`tfds`: a prepared tfds data_dir (works offline).")
    tfds_download: bool = Field(True, description="`tfds`: allow tfds to download and prepare the dataset.")
    tfds_text_key: str = Field("text", min_length=1, description="`tfds`: the feature holding the text; every split is joined in order.")
    max_chars: Optional[int] = Field(
        None, ge=1000, description="Read only the first this many characters (quick checks, smoke tests); unset: all of it."
    )
    validation_split: float = Field(
        0.1, ge=0.0, lt=0.5, description="The last this fraction of the text is held out for validation: contiguous, "
        "so no window of it is ever trained on.",
    )
    level: Literal["char", "word"] = Field(
        "char", description="Tokens are characters, or words (runs of letters, digits and apostrophes; each other "
        "symbol and each line break is a token of its own).",
    )
    lowercase: bool = Field(False, description="Lower-case the text, in training and in the export (smaller word vocabulary).")
    max_vocab: Optional[int] = Field(
        None, ge=2, description="Keep the most frequent tokens of the training text, the unknown token included; unset: every one."
    )
    min_count: int = Field(1, ge=1, description="Tokens seen fewer times in the training text become the unknown token.")
    seq_len: int = Field(100, ge=2, le=10000, description="Tokens per training window (truncated backpropagation through time).")
    batch_size: int = Field(64, ge=1, description="Windows per batch, split across replicas.")
    stateful: bool = Field(
        False, description="Read the text as `batch_size` parallel streams and carry the recurrent state from each window "
        "to the next (stateful truncated backpropagation: context past `seq_len`), reset at each epoch's start; "
        "validation is read the same way, its state carried through the validation text. False: independent windows, "
        "each from a zero state, shuffled."
    )

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "files" and not self.path:
            raise ValueError("key `data.path` is required when `data.source` is `files`")
        if self.source == "tfds" and not self.tfds_name:
            raise ValueError("key `data.tfds_name` is required when `data.source` is `tfds`")
        return self


class DialogueRNNModel(Section):
    """The dialogue language model (`models/dialogue_rnn.py`): embedding, stacked recurrent layers, next-token logits."""

    name: Literal["dialogue_rnn"] = Field("dialogue_rnn", description="Architecture, a key of `models.MODELS`.")
    cell: Literal["simple_rnn", "gru", "lstm"] = Field(
        "simple_rnn", description="Recurrent layer: `simple_rnn` (the product's default), `gru` or `lstm` (gated: better "
        "loss for the same time, slower per step).",
    )
    units: list[Annotated[int, Field(ge=1)]] = Field([512], min_length=1, description="Units of each stacked recurrent layer, bottom first.")
    embedding_dim: int = Field(64, ge=1, description="Size of the token embeddings.")
    activation: Literal["tanh", "relu"] = Field("tanh", description="Activation of a `simple_rnn` (the seed used ReLU).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout between stacked layers and before the output layer.")

    @model_validator(mode="after")
    def _activation_is_simple_rnn(self):
        if self.activation != "tanh" and self.cell != "simple_rnn":
            raise ValueError(f"key `model.activation`: applies to `simple_rnn` only (a `{self.cell}` keeps its own "
                             f"gates), got {self.activation!r}")
        return self


class Samples(Section):
    """Text generated from fixed prompts after each epoch (logged to MLflow), and the limits of the exported `generate`."""

    prompts: list[str] = Field(
        ["ROMEO:", "JULIET:\nO, "], description="Prompts whose continuations are logged as `samples/epoch_NNN.txt` after each epoch."
    )
    max_tokens: int = Field(200, ge=0, description="Tokens generated per prompt for the logged samples.")
    temperature: float = Field(0.8, ge=0.0, le=10.0, description="Sampling temperature of the logged samples (0: always the likeliest token).")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens only (0: all of them).")
    every_epochs: int = Field(1, ge=1, description="Log samples every this many epochs (and after the last).")
    max_tokens_limit: int = Field(
        5000, ge=1, le=1_000_000, description="The exported `generate` clamps `max_tokens` to this, so one request cannot run for hours."
    )


class DialogueRun(RunConfig):
    """A dialogue run (`task: dialogue`): a character- or word-level language model of scripts."""

    task: Literal["dialogue"] = Field("dialogue", description="Predict the next token of a script; generate lines.")
    data: DialogueData = Field(default_factory=DialogueData, description="Input text.")
    model: DialogueRNNModel = Field(default_factory=DialogueRNNModel, description="Architecture.")
    samples: Samples = Field(default_factory=Samples, description="Generated samples and generation limits.")
