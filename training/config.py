"""The run configuration: one typed class per section, every key declared once.

A run is described by one YAML file. Each key below has a type, a default and a
one-line reason; `docs/config.md` is generated from these declarations
(`python scripts/gen_config_docs.py`), so the documentation cannot drift.

Loading is strict: unknown keys, keys given twice, wrong types (a boolean is
not a number), out-of-range or non-finite values (`.inf`, `.nan`), missing
files, YAML aliases that expand into a huge document ("billion laughs") and
malformed `--set` overrides raise `ConfigError`, whose message names the dotted
key (or the file), the bad value (cut to one short line) and what was expected.

YAML is read with YAML 1.2 scalars: `1e-3` is a float (PyYAML alone reads a
string) and only `true`/`false` are booleans (PyYAML alone reads `no` as false).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import reprlib
import types
import typing
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from training.errors import ConfigError


# --------------------------------------------------------------------------- YAML


# A config has a few hundred values; aliases that expand into more are an alias bomb ("billion laughs").
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 100


class _YamlProblem(yaml.YAMLError):
    """A document that parses but cannot be a config: a duplicate key, an alias bomb, a loop."""

    def __init__(self, message: str, mark):
        super().__init__(message)
        self.message, self.mark = message, mark


class _Yaml12Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 core-schema booleans and floats.

    Before building Python objects it walks the document as its aliases expand
    it: a key given twice in one mapping is an error (PyYAML keeps the last one
    silently), and so is a document that expands into more than
    `MAX_YAML_NODES` values or nests deeper than `MAX_YAML_DEPTH` or loops back
    into itself. Keys brought in by a `<<` merge key may be overridden: that is
    what merging is for.
    """

    key_prefix: tuple = ()  # the dotted key a `--set` value goes to

    def construct_document(self, node):
        self._check_document(node)
        return super().construct_document(node)

    def _check_document(self, root) -> None:
        count = 0
        ancestors: set[int] = set()

        def where(path) -> str:
            keys = list(self.key_prefix) + list(path)
            while keys and isinstance(keys[-1], int):  # name the key, not the list index
                keys.pop()
            return f"key `{'.'.join(map(str, keys))}`: " if keys else ""

        def visit(node, path) -> None:
            nonlocal count
            count += 1
            if count > MAX_YAML_NODES:
                raise _YamlProblem(f"{where(path)}aliases expand the document into more than {MAX_YAML_NODES:,} values "
                                   "(an alias bomb?); a config needs far fewer", node.start_mark)
            if isinstance(node, yaml.ScalarNode):
                return
            if id(node) in ancestors:
                raise _YamlProblem(f"{where(path)}an alias refers to a value that contains it (a loop)", node.start_mark)
            if len(ancestors) >= MAX_YAML_DEPTH:
                raise _YamlProblem(f"{where(path)}nested more than {MAX_YAML_DEPTH} levels deep", node.start_mark)
            ancestors.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                for i, item in enumerate(node.value):
                    visit(item, path + (i,))
            else:
                seen = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        visit(value_node, path)  # merged keys: this mapping's own keys may override them
                        continue
                    visit(key_node, path)
                    key = None
                    if isinstance(key_node, yaml.ScalarNode):  # other keys are refused when the mapping is built
                        key = self.construct_object(key_node)
                        first = seen.setdefault(key, key_node)
                        if first is not key_node:
                            a, b = first.start_mark, key_node.start_mark
                            at = (f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}" if a.line == b.line
                                  else f"lines {a.line + 1} and {b.line + 1}")
                            dotted = ".".join(map(str, list(self.key_prefix) + list(path) + [key]))
                            raise _YamlProblem(f"key `{dotted}` appears twice ({at}); give each key once", b)
                    visit(value_node, path + (key,))
            ancestors.discard(id(node))

        visit(root, ())


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str, source: str = "<string>", key_prefix: str = "") -> Any:
    """Parses YAML text safely (no Python objects), with YAML 1.2 scalars.

    Duplicate keys, alias bombs and self-referencing aliases are errors;
    `key_prefix` (the dotted key of a `--set` value) prefixes the keys named in them.
    """
    loader = _Yaml12Loader(text)
    loader.key_prefix = tuple(key_prefix.split(".")) if key_prefix else ()
    try:
        return loader.get_single_data()
    except _YamlProblem as e:
        raise ConfigError(f"{source}:{e.mark.line + 1}: {e.message}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply to be a config)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- schema


def _wants_number(annotation, value) -> Optional[str]:
    """`"an integer"` or `"a number"` where `value` holds a boolean at a place `annotation` wants an int or
    float (pydantic would read `true` as 1), else None. Looks inside lists, Optional and Union."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is bool:
        return None
    if annotation in (int, float):
        return ("an integer" if annotation is int else "a number") if isinstance(value, bool) else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if any(a is bool or a is Any for a in args):
            return None
        return next((w for a in args if (w := _wants_number(a, value))), None)
    if origin in (list, tuple, set, frozenset) and isinstance(value, (list, tuple, set, frozenset)) and args:
        return next((w for v in value if (w := _wants_number(args[0], v))), None)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return next((w for v in value.values() if (w := _wants_number(args[1], v))), None)
    return None


class _Section(BaseModel):
    # Unknown keys are errors (typos must not become silent new keys); a value
    # assigned later is validated again. Numbers are finite: `.inf` and `.nan`
    # are errors, and so are booleans where a number is expected.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info: ValidationInfo):
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        wanted = _wants_number(field.annotation, value) if field is not None else None
        if wanted:
            raise ValueError(f"got {_short_repr(value)}: expected {wanted}, not a boolean")
        return value


class FramesData(_Section):
    """Where the frames come from and how they are read."""

    source: Literal["sample", "folders", "tfds"] = Field(
        "sample",
        description="`sample`: frames generated by reelml (offline, ours to ship); `folders`: class-per-folder "
        "image files; `tfds`: a TensorFlow Datasets name.",
    )
    sample_dir: str = Field(
        "data/sample_frames",
        description="Where `source: sample` writes its generated JPEG frames (made once, then reused).",
    )
    train_dir: Optional[str] = Field(
        None, description="`folders`: the training images, one sub-folder per class (folder name = label)."
    )
    test_dir: Optional[str] = Field(
        None, description="`folders`: held-out test images in the same class folders; unset: no test metrics (the report uses validation)."
    )
    tfds_name: Optional[str] = Field(None, description="`tfds`: dataset name, e.g. `imagenette/160px` (needs internet unless prepared).")
    tfds_data_dir: Optional[str] = Field(None, description="`tfds`: a prepared tfds data_dir (works offline).")
    tfds_download: bool = Field(True, description="`tfds`: allow tfds to download and prepare the dataset.")
    tfds_train_split: str = Field("train", description="`tfds`: split used for training (and validation).")
    tfds_test_split: Optional[str] = Field("test", description="`tfds`: held-out split for the final test metrics.")
    validation_split: float = Field(
        0.1, ge=0.0, lt=0.9, description="Fraction of the training images held out (stratified, seeded) for validation and early stopping."
    )
    image_size: int = Field(
        128, ge=8, le=1024, description="Frames are decoded and resized once to this square size (pixels) before caching."
    )
    batch_size: int = Field(32, ge=1, description="Global batch size, split across replicas.")
    cache: Literal["memory", "disk", "none"] = Field(
        "memory", description="Cache decoded frames after the first epoch: in RAM, in a file under the run folder, or not at all."
    )
    shuffle_buffer: int = Field(4096, ge=1, description="Shuffle buffer (frames); at least the dataset size gives a full shuffle.")
    on_bad_file: Literal["skip", "error"] = Field(
        "skip", description="A corrupt or unreadable image is skipped and counted (`skip`) or stops the run (`error`)."
    )

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "folders" and not self.train_dir:
            raise ValueError("key `data.train_dir` is required when `data.source` is `folders`")
        if self.source == "tfds" and not self.tfds_name:
            raise ValueError("key `data.tfds_name` is required when `data.source` is `tfds`")
        return self


class FrameCNNModel(_Section):
    """The frame CNN (`models/frame_cnn.py`): a stack of conv blocks and a classifier head."""

    name: Literal["frame_cnn"] = Field("frame_cnn", description="Architecture, a key of `models.MODELS`.")
    input_size: int = Field(128, ge=8, le=1024, description="The model resizes any input frame to this square size first.")
    filters: list[Annotated[int, Field(ge=1)]] = Field(
        [32, 64, 128, 256], min_length=1, description="Filters of each conv block; each block ends with pooling."
    )
    convs_per_block: Union[Annotated[int, Field(ge=1, le=8)], list[Annotated[int, Field(ge=1, le=8)]]] = Field(
        2, description="Conv layers in each block (VGG-style stacking): one number for all blocks, or one per block."
    )
    kernel_size: int = Field(3, ge=1, le=11, description="Square kernel size of every conv.")
    padding: Literal["same", "valid"] = Field("same", description="Conv padding; `valid` (Keras' default) shrinks each map by kernel_size - 1.")
    batch_norm: bool = Field(True, description="BatchNormalization after each conv (faster, steadier training).")
    batch_norm_momentum: float = Field(
        0.99, gt=0.0, lt=1.0, description="Momentum of batch-norm statistics; lower adapts faster (few steps per epoch)."
    )
    sync_batch_norm: bool = Field(
        True, description="Batch-norm statistics over the global batch across replicas and workers, so N of them train like one device."
    )
    pooling: Literal["max", "average"] = Field("max", description="2x2 pooling closing each block.")
    head: Literal["global_average", "flatten"] = Field(
        "global_average", description="Global average pooling (few parameters) or Flatten (the seed) before the dense layers."
    )
    dense_units: list[Annotated[int, Field(ge=1)]] = Field([], description="Hidden Dense layers (ReLU) of the head.")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout before each dense layer of the head.")
    augment: bool = Field(True, description="Random flip, translation, zoom and contrast, active in training only.")
    augment_translation: float = Field(0.1, ge=0.0, lt=1.0, description="Largest random shift, as a fraction of the frame.")
    augment_zoom: float = Field(0.1, ge=0.0, lt=1.0, description="Largest random zoom in or out, as a fraction.")
    augment_contrast: float = Field(0.1, ge=0.0, lt=1.0, description="Largest random contrast change, as a fraction.")
    test_time_flip: bool = Field(
        False, description="Inference averages each frame with its mirror image: steadier predictions for 2x inference cost."
    )


    @model_validator(mode="after")
    def _one_entry_per_block(self):
        if isinstance(self.convs_per_block, list) and len(self.convs_per_block) != len(self.filters):
            raise ValueError(
                f"key `model.convs_per_block`: expected one entry per block of `model.filters` ({len(self.filters)}), "
                f"got {_short_repr(self.convs_per_block)}"
            )
        return self


class AutoencoderData(FramesData):
    """Where the frames (class sub-folders, if any, are ignored) or the feature rows come from."""

    source: Literal["sample", "folders", "tfds", "table", "sample_table"] = Field(
        "sample",
        description="Frames: `sample` (generated by reelml), `folders` (image files in any folder layout), `tfds`; "
        "feature vectors: `table` (a CSV, Parquet or .npy file) or `sample_table` (feature rows generated by reelml).",
    )
    path: Optional[str] = Field(
        None, description="`table`: the training rows: a CSV or Parquet file with a header, or a 2-D .npy array (one row per input)."
    )
    test_path: Optional[str] = Field(None, description="`table`: held-out rows in the same layout; unset: no test metrics.")
    columns: Optional[list[str]] = Field(
        None, min_length=1, description="`table`: the feature columns of a CSV or Parquet file; unset: every column but `data.id_column`."
    )
    id_column: Optional[str] = Field(
        None, description="`table`: a column naming each row (shot ID, timecode): not a feature, written beside predictions."
    )
    sample_table_dir: str = Field(
        "data/sample_features", description="Where `source: sample_table` writes its generated feature rows (made once, then reused)."
    )
    random_flip: bool = Field(
        True, description="Frames: mirror training frames at random (input and target alike): more variety from a small set."
    )
    random_shift: float = Field(
        0.0, ge=0.0, lt=0.5, description="Frames: shift training frames at random by up to this fraction of their size "
        "(edges reflected; input and target alike); 0: no shifts."
    )
    random_zoom: float = Field(
        0.0, ge=0.0, lt=1.0, description="Frames: zoom training frames in at random: a square crop of (1 - this) to all of "
        "the frame's side, anywhere in it, resized back (input and target alike); 0: no zoom."
    )

    @model_validator(mode="after")
    def _table_needs(self):
        if self.source == "table" and not self.path:
            raise ValueError("key `data.path` is required when `data.source` is `table`")
        if self.validation_split <= 0:
            raise ValueError("key `data.validation_split`: expected more than 0: the anomaly threshold is calibrated on "
                             f"validation data, got {self.validation_split}")
        return self


class AutoencoderModel(_Section):
    """The autoencoders (`models/autoencoder.py`): convolutional for frames, dense for feature vectors."""

    name: Literal["conv_autoencoder", "dense_autoencoder"] = Field(
        "conv_autoencoder", description="`conv_autoencoder` (frames only) or `dense_autoencoder` (feature rows, or frames flattened)."
    )
    code_size: int = Field(32, ge=1, description="Size of the code: the embedding, and the bottleneck that forces the model to generalise.")
    filters: list[Annotated[int, Field(ge=1)]] = Field(
        [32, 64, 128, 256], min_length=1, description="`conv_autoencoder`: filters of each block; each block halves the frame (the decoder mirrors it)."
    )
    convs_per_block: int = Field(1, ge=1, le=8, description="`conv_autoencoder`: convolutions per block, the first one strided.")
    kernel_size: int = Field(3, ge=1, le=11, description="`conv_autoencoder`: square kernel size of every convolution.")
    batch_norm: bool = Field(
        False, description="`conv_autoencoder`: BatchNormalization after each convolution; off: with few steps per epoch its "
        "moving statistics lag and inflate validation errors.")
    hidden_units: list[Annotated[int, Field(ge=1)]] = Field(
        [256], description="`dense_autoencoder`: hidden ReLU layers of the encoder, before the code."
    )
    decoder_units: Optional[list[Annotated[int, Field(ge=1)]]] = Field(
        None, description="`dense_autoencoder`: hidden ReLU layers of the decoder; unset: `hidden_units` reversed."
    )
    code_activation: Literal["linear", "relu"] = Field(
        "linear", description="Activation of the code layer; linear codes have no dead units and suit the code-space anomaly score."
    )
    output_activation: Literal["auto", "sigmoid", "linear"] = Field(
        "auto", description="`auto`: sigmoid for frames (pixels scaled to [0, 1]), linear for feature rows (standardised)."
    )
    noise_stddev: float = Field(
        0.0, ge=0.0, lt=10.0, description="Denoising: Gaussian noise added to the scaled input in training only (the target stays "
        "clean); 0 trains a plain autoencoder.",
    )


class Anomaly(_Section):
    """How the export scores inputs and where it draws the line (both stored inside the SavedModel)."""

    score: Literal["mse", "typicality"] = Field(
        "typicality",
        description="`mse`: mean squared reconstruction error; `typicality`: how far the way the reconstruction misses the input "
        "(error size, its spread over pixels, blocks and channels, lost detail) lies from the training inputs', too high or "
        "too low: also flags black and blurred frames, which reconstruct too well.",
    )
    threshold_percentile: float = Field(
        99.0, gt=0.0, lt=100.0, description="The threshold of `is_anomaly` is this percentile of the validation scores: about "
        "(100 - p)% of good inputs are flagged.",
    )


class Columns(_Section):
    """Which columns of a CSV or Parquet file hold what (MovieLens formats have fixed columns)."""

    user: str = Field("user_id", min_length=1, description="Column of the user IDs (kept as strings, as in the file).")
    item: str = Field("item_id", min_length=1, description="Column of the item IDs (kept as strings, as in the file).")
    rating: Optional[str] = Field(None, description="Column of explicit ratings; needed only for `data.min_rating`.")
    timestamp: Optional[str] = Field(
        None, description="Column of interaction times (numbers); unset: held-out items are drawn at random (seeded)."
    )
    weight: Optional[str] = Field(
        None, description="Column of per-interaction weights, e.g. watch time; unset: every interaction weighs 1."
    )
    title: str = Field("title", min_length=1, description="Column of the titles in a CSV or Parquet `data.items_path`.")


class RecommenderData(_Section):
    """Where the viewing log comes from, how it becomes implicit feedback, and how it is split and sampled."""

    source: Literal["sample", "file", "tfds"] = Field(
        "sample",
        description="`sample`: a viewing log generated by reelml (offline, ours to ship); `file`: a ratings or "
        "interactions file; `tfds`: a TensorFlow Datasets `movielens/*` name.",
    )
    sample_dir: str = Field(
        "data/sample_views", description="Where `source: sample` writes its generated log and titles (made once, then reused)."
    )
    sample_users: int = Field(600, ge=10, description="`sample`: viewers in the generated log.")
    sample_items: int = Field(400, ge=120, description="`sample`: titles in the generated catalogue (at least eval negatives + 1).")
    path: Optional[str] = Field(None, description="`file`: the interactions file (MovieLens u.data, ratings.dat, ratings.csv, any CSV or Parquet).")
    format: Literal["auto", "movielens_100k", "movielens_1m", "movielens_latest", "csv", "parquet"] = Field(
        "auto",
        description="`auto`: from the file name (u.data, ratings.dat, ratings.csv with a userId header, *.parquet, else CSV "
        "read with `data.columns`).",
    )
    delimiter: str = Field(",", min_length=1, description="Field separator of a `csv` file (`\\t` for tabs).")
    columns: Columns = Field(default_factory=Columns, description="Column mapping of `csv` and `parquet` files.")
    items_path: Optional[str] = Field(
        None, description="Optional item metadata (MovieLens u.item or movies.dat, or a CSV/Parquet with `columns.item` and "
        "`columns.title`): titles come back beside IDs.",
    )
    tfds_name: Optional[str] = Field(None, description="`tfds`: e.g. `movielens/100k-ratings` (needs internet unless prepared).")
    tfds_data_dir: Optional[str] = Field(None, description="`tfds`: a prepared tfds data_dir (works offline).")
    tfds_download: bool = Field(True, description="`tfds`: allow tfds to download and prepare the dataset.")
    min_rating: Optional[float] = Field(
        None, description="Implicit feedback: unset keeps every interaction; a number keeps only ratings at or above it."
    )
    min_user_interactions: int = Field(
        3, ge=3, description="Users with fewer interactions stay in training only: one to train on, one to validate, one to test."
    )
    split_seed: Optional[int] = Field(
        None, ge=0, description="Seeds the held-out items and evaluation negatives; unset: the run's `seed`. Keep it fixed to "
        "compare runs (and to pretrain NeuMF) on one split.",
    )
    eval_negatives: int = Field(99, ge=1, description="Items the user never interacted with, ranked against each held-out item (the NCF paper: 99).")
    recency_weight: float = Field(
        0.0, ge=0.0, le=20.0, description="Weight each training interaction by exp(w * (r - 1)), r its place in the user's "
        "history (0 first, 1 latest): the held-out items are each user's latest, so recent taste counts more. 0: all equal."
    )
    train_on_validation: bool = Field(
        False, description="The final fit: each user's validation item joins training (no validation metrics), once "
        "settings and `train.epochs` were chosen on validation. Test items and their candidates stay the same."
    )
    train_negatives: int = Field(4, ge=1, description="Negatives sampled per training positive, drawn again every epoch (the NCF paper: 4).")
    top_k: list[Annotated[int, Field(ge=1)]] = Field(
        [10], min_length=1, description="Cut-offs K of the HR@K and NDCG@K metrics (`hr_at_K`, `ndcg_at_K`)."
    )
    batch_size: int = Field(256, ge=1, description="Training positives per batch (each with its negatives), split across replicas.")
    eval_batch_size: int = Field(1024, ge=1, description="Evaluation users per batch, each with all their candidates in one model call.")

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "file" and not self.path:
            raise ValueError("key `data.path` is required when `data.source` is `file`")
        if self.source == "tfds" and not self.tfds_name:
            raise ValueError("key `data.tfds_name` is required when `data.source` is `tfds`")
        if self.source == "sample" and self.sample_items <= self.eval_negatives:
            raise ValueError(f"key `data.sample_items`: expected more than `data.eval_negatives` ({self.eval_negatives}), "
                             f"got {self.sample_items}")
        return self


class NCFModel(_Section):
    """Neural collaborative filtering (`models/ncf.py`): GMF, MLP, NeuMF, or the seed's collaborative filter."""

    name: Literal["neumf", "gmf", "mlp", "seed_cf"] = Field(
        "neumf", description="`neumf` fuses `gmf` (embedding product) and `mlp` (embeddings through a tower); `seed_cf`: "
        "user one-hot -> Dense ReLU -> Dense sigmoid over every item."
    )
    factors: int = Field(8, ge=1, description="GMF embedding size (the predictive factors of the NCF paper).")
    mlp_layers: list[Annotated[int, Field(ge=1)]] = Field(
        [64, 32, 16, 8], min_length=1, description="MLP tower: the first entry is the concatenated user+item embedding size "
        "(half each), then one ReLU Dense per entry; `seed_cf`: its hidden Dense layers."
    )
    embedding_l2: float = Field(0.0, ge=0.0, lt=1.0, description="L2 penalty on the embeddings (train.l2 covers the Dense kernels).")
    pretrain_gmf: Optional[str] = Field(
        None, description="`neumf`: initialise from a trained GMF run: its MLflow run id or its export folder (the paper's pretraining)."
    )
    pretrain_mlp: Optional[str] = Field(None, description="`neumf`: initialise from a trained MLP run (run id or export folder).")
    pretrain_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the GMF output layer (1 - alpha for the MLP's) when both are pretrained."
    )

    @model_validator(mode="after")
    def _pretrain_needs(self):
        if (self.pretrain_gmf or self.pretrain_mlp) and self.name != "neumf":
            raise ValueError("keys `model.pretrain_gmf` and `model.pretrain_mlp` apply only when `model.name` is `neumf`")
        if bool(self.pretrain_gmf) != bool(self.pretrain_mlp):
            raise ValueError("keys `model.pretrain_gmf` and `model.pretrain_mlp`: give both (the paper's pretraining) or neither")
        if self.name in ("mlp", "neumf") and self.mlp_layers[0] % 2:
            raise ValueError(f"key `model.mlp_layers`: the first entry is split between user and item embeddings, "
                             f"expected an even number, got {self.mlp_layers[0]}")
        return self


class DialogueData(_Section):
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

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "files" and not self.path:
            raise ValueError("key `data.path` is required when `data.source` is `files`")
        if self.source == "tfds" and not self.tfds_name:
            raise ValueError("key `data.tfds_name` is required when `data.source` is `tfds`")
        return self


class DialogueRNNModel(_Section):
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


class Samples(_Section):
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


class Train(_Section):
    """The optimisation: how long, how fast, on what hardware."""

    epochs: int = Field(30, ge=1, description="Passes over the training data.")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Keras optimizer.")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="`cosine`: linear warm-up, then cosine decay to zero at the last epoch."
    )
    warmup_epochs: float = Field(1.0, ge=0.0, description="Linear learning-rate warm-up (epochs), for `cosine`.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum, for `sgd`.")
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0, description="Decoupled weight decay, for `adamw`.")
    l2: float = Field(0.0, ge=0.0, lt=1.0, description="L2 regularisation added to the loss for every kernel.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the classification loss.")
    clipnorm: Optional[float] = Field(None, gt=0.0, description="Clip each gradient to this norm (unset: no clipping).")
    monitor: str = Field(
        "val_loss", pattern=r"^[A-Za-z0-9_]+$",
        description="Epoch metric that picks the best epoch and drives early stopping, e.g. `val_hr_at_10` (always a "
        "validation metric: test data never chooses)."
    )
    monitor_mode: Literal["min", "max"] = Field("min", description="Whether a lower (`min`, losses) or higher (`max`, hit rates) `monitor` is better.")
    early_stopping_patience: Optional[int] = Field(
        None, ge=1, description="Stop after this many epochs without a better `train.monitor` (unset: never)."
    )
    restore_best: bool = Field(
        True, description="Evaluate and export the weights of the epoch with the best `train.monitor`, not the last epoch."
    )
    steps_per_execution: int = Field(1, ge=1, description="Training steps run inside one compiled call (fewer Python round-trips).")
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="Cap on steps per epoch (smoke tests, quick checks).")
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = Field(
        "auto",
        description="tf.distribute strategy: `auto` trains over a cluster when TF_CONFIG, a SLURM job step or "
        "`train.cluster_workers` describes one, else mirrors over all local GPUs when there are several, else one device; "
        "`multi_worker` insists on a cluster.",
    )
    cluster_workers: Optional[list[str]] = Field(
        None, description="`host:port` of every worker, in order, when neither TF_CONFIG nor a SLURM job step describes "
        "the cluster (then `auto` and `multi_worker` train over them)."
    )
    worker_index: Optional[int] = Field(None, ge=0, description="This process's place in `train.cluster_workers` (0 is the chief).")
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="`auto`: mixed_float16 on GPUs that have tensor cores, float32 elsewhere."
    )
    jit_compile: Literal["auto", "on", "off"] = Field(
        "auto", description="XLA for the training step: `auto` turns it on for GPUs and off on CPU (slower there) or for models "
        "with ops XLA cannot compile; `on` insists."
    )
    checkpoint_every_epochs: int = Field(1, ge=1, description="Checkpoint the run every this many epochs (and at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept; older ones are deleted.")
    nan_guard: bool = Field(True, description="Stop with a clear error when the loss becomes NaN or infinite.")

    @model_validator(mode="after")
    def _cluster_needs(self):
        if (self.cluster_workers is None) != (self.worker_index is None):
            raise ValueError("keys `train.cluster_workers` and `train.worker_index` go together: set both or neither")
        if self.cluster_workers is not None and self.worker_index >= len(self.cluster_workers):
            raise ValueError(f"key `train.worker_index`: got {self.worker_index}: expected less than the "
                             f"{len(self.cluster_workers)} entries of `train.cluster_workers`")
        return self


# The tracking stores MLflow can open (mlflow.tracking._tracking_service.utils), by URI scheme.
TRACKING_URI_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
_DB_SCHEME = re.compile(r"(?:sqlite|postgresql|mysql|mssql)(?:\+[a-z0-9_]+)?")


def tracking_uri_problem(uri: str) -> Optional[str]:
    """Why MLflow cannot use `uri` as a tracking store (its scheme), or None if it can."""
    scheme = urllib.parse.urlparse(uri).scheme  # lower-cased; MLflow reads it the same way
    if not scheme or len(scheme) == 1 or scheme in TRACKING_URI_SCHEMES or _DB_SCHEME.fullmatch(scheme):
        return None  # a local path (a Windows drive letter too), or a scheme MLflow opens
    return (f"scheme `{scheme}:` is not one MLflow can track to; expected a local path or a URI starting with "
            "file:, sqlite:, postgresql:, mysql:, mssql: (or dialect+driver:, e.g. postgresql+psycopg2:), "
            "http:, https:, databricks, databricks-uc or uc:")


class Tracking(_Section):
    """Where the run is recorded."""

    uri: Optional[str] = Field(
        None, description="MLflow tracking URI; unset: $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working directory."
    )
    experiment: str = Field("reelml", min_length=1, description="MLflow experiment name.")
    run_name: Optional[str] = Field(None, description="MLflow run name; unset: the config's `name`.")
    enabled: bool = Field(True, description="Track the run in MLflow (turn off for throwaway runs).")

    @field_validator("uri")
    @classmethod
    def _mlflow_can_open(cls, uri):
        if uri is not None and (problem := tracking_uri_problem(uri)):
            raise ValueError(problem)
        return uri


class Export(_Section):
    """The SavedModel written at the end of a run."""

    enabled: bool = Field(True, description="Write a SavedModel when training ends.")
    dir: str = Field("exports", description="Exports go to `<dir>/<name>/<version>/` (the layout TF Serving watches).")
    verify: bool = Field(True, description="Reload the export in a fresh process that cannot import reelml and compare outputs.")


class RunConfig(_Section):
    """One training run: the sections every task shares. Each task adds its `data` and `model`."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name: names the run folder, the export folder and the MLflow run."
    )
    task: str = Field("frames", description="What is learned (a task below); picks the schema of `data` and `model`, the pipeline, metrics and signatures.")
    seed: int = Field(1234, ge=0, description="Seeds Python, NumPy, TensorFlow and the data split, for reproducible runs.")
    runs_dir: str = Field("runs", description="Checkpoints, TensorBoard logs and the resolved config go to `<runs_dir>/<name>/`.")
    train: Train = Field(default_factory=Train, description="Optimisation.")
    tracking: Tracking = Field(default_factory=Tracking, description="MLflow tracking.")
    export: Export = Field(default_factory=Export, description="SavedModel export.")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A short hash of the resolved config: identifies which run a checkpoint belongs to."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """The config as `{"train.learning_rate": 0.001, ...}` (MLflow params)."""
        out: dict[str, Any] = {}

        def walk(prefix, value):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


class FramesRun(RunConfig):
    """A frame-classification run (`task: frames`)."""

    task: Literal["frames"] = Field("frames", description="Classify video frames.")
    data: FramesData = Field(default_factory=FramesData, description="Input data.")
    model: FrameCNNModel = Field(default_factory=FrameCNNModel, description="Architecture.")


class RecommenderRun(RunConfig):
    """A recommender run (`task: recommender`): neural collaborative filtering on implicit feedback."""

    task: Literal["recommender"] = Field("recommender", description="Recommend items to users from their interactions.")
    data: RecommenderData = Field(default_factory=RecommenderData, description="Input data.")
    model: NCFModel = Field(default_factory=NCFModel, description="Architecture.")


class AutoencoderRun(RunConfig):
    """An autoencoder run (`task: autoencoder`): embeddings, reconstructions and calibrated anomaly scores."""

    task: Literal["autoencoder"] = Field("autoencoder", description="Reconstruct frames or feature rows; flag what does not look like them.")
    data: AutoencoderData = Field(default_factory=AutoencoderData, description="Input data.")
    model: AutoencoderModel = Field(default_factory=AutoencoderModel, description="Architecture.")
    anomaly: Anomaly = Field(default_factory=Anomaly, description="Anomaly score and threshold.")

    @model_validator(mode="after")
    def _model_fits_data(self):
        table = self.data.source in ("table", "sample_table")
        if table and self.model.name == "conv_autoencoder":
            raise ValueError(f"key `model.name`: `conv_autoencoder` takes frames, but `data.source` `{self.data.source}` gives "
                             "feature rows; use `dense_autoencoder`")
        if table and self.model.output_activation == "sigmoid":
            raise ValueError("key `model.output_activation`: `sigmoid` cannot reach standardised feature values; use `linear` or `auto`")
        if not table and self.model.name == "conv_autoencoder" and self.data.image_size % 2 ** len(self.model.filters):
            raise ValueError(f"key `data.image_size`: each of the {len(self.model.filters)} blocks of `model.filters` halves the "
                             f"frame, so expected a multiple of {2 ** len(self.model.filters)}, got {self.data.image_size}")
        return self


class DialogueRun(RunConfig):
    """A dialogue run (`task: dialogue`): a character- or word-level language model of scripts."""

    task: Literal["dialogue"] = Field("dialogue", description="Predict the next token of a script; generate lines.")
    data: DialogueData = Field(default_factory=DialogueData, description="Input text.")
    model: DialogueRNNModel = Field(default_factory=DialogueRNNModel, description="Architecture.")
    samples: Samples = Field(default_factory=Samples, description="Generated samples and generation limits.")


# `task:` picks the schema of the whole file.
RUN_CONFIGS: dict[str, type[RunConfig]] = {
    "frames": FramesRun,
    "recommender": RecommenderRun,
    "autoencoder": AutoencoderRun,
    "dialogue": DialogueRun,
}


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml_file(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Reads a config file, resolving `base:` (relative to the file) recursively."""
    try:
        exists = path.exists()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise ConfigError(f"{_short_repr(str(path))}: cannot read the config ({e})") from None
    if not exists:
        raise ConfigError(f"{path}: config file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: expected a YAML file, found a directory")
    resolved = path.resolve()
    if resolved in chain:
        raise ConfigError(f"{path}: `base:` chain loops back to itself ({' -> '.join(str(p) for p in chain + (resolved,))})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config ({e})") from None
    data = yaml_load(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip() or "\0" in base:
        raise ConfigError(f"{path}: key `base`: expected a path to another YAML config, got {_short_repr(base)}")
    parent = _read_yaml_file(path.parent / base, chain + (resolved,))
    return _deep_merge(parent, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses one `--set dotted.key=value` into (["dotted", "key"], value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set train.epochs=5")
    parts = key.split(".")
    if any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"--set {text!r}: `{key}` is not a dotted key (letters, digits and _ separated by dots)")
    value = yaml_load(raw, f"--set {key}", key_prefix=key) if raw.strip() else None
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any, text: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text}: `{'.'.join(parts[: i + 1])}` is a value, not a section")
        node = child
    node[parts[-1]] = value


class _YamlRepr(reprlib.Repr):
    """`reprlib.Repr` that writes booleans and null as YAML does (the user wrote `true`, not `True`)."""

    def repr_bool(self, x, level):
        return "true" if x else "false"

    def repr_NoneType(self, x, level):  # noqa: N802 - reprlib looks methods up by type name
        return "null"


_REPR = _YamlRepr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 78, 78, 40


def _short_repr(value: Any, limit: int = 80) -> str:
    """A one-line repr of a value as the user gave it, cut at about `limit` characters.

    A value can be huge (a long list, a long string, aliases that repeat a list
    many times): error messages show its start only.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_expected(err: dict) -> str:
    if err["type"] == "literal_error":
        return f"expected one of {(err.get('ctx') or {}).get('expected')}"
    msg = err["msg"]
    return msg[0].lower() + msg[1:]


def _clean_loc(loc) -> str:
    # Union branches show up in the location as tags like `list[int]`: they are not keys.
    return ".".join(str(p) for p in loc if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)))


def _format_validation_error(e: ValidationError, source: str) -> str:
    lines, by_key = [], {}
    for err in e.errors():
        by_key.setdefault(_clean_loc(err["loc"]), []).append(err)
    for loc, errs in by_key.items():
        err = errs[0]
        if err["type"] == "value_error":
            msg = err["msg"].removeprefix("Value error, ")
            # Checks across fields name their keys themselves.
            lines.append(f"{source}: {msg}" if msg.startswith("key `") or not loc else f"{source}: key `{loc}`: {msg}")
        elif err["type"] == "missing":
            lines.append(f"{source}: key `{loc}` is required")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{source}: key `{loc}` does not exist (check the spelling; docs/config.md lists every key)")
        else:
            expected = " or ".join(dict.fromkeys(_describe_expected(x) for x in errs))
            lines.append(f"{source}: key `{loc}`: got {_short_repr(err.get('input'))}: {expected}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Loads a YAML run config, applies `--set` overrides and validates it.

    Args:
        path: the YAML file. A `base:` key names another config (relative to
            this file) whose values this one overrides.
        overrides: `dotted.key=value` strings; values are parsed as YAML.

    Returns:
        The validated `RunConfig`.

    Raises:
        ConfigError: with a message naming the file or dotted key and what was expected.
    """
    path = Path(path)
    data = _read_yaml_file(path)
    for text in overrides:
        parts, value = parse_override(text)
        _apply_override(data, parts, value, text)
    return validate(data, str(path))


def validate(data: dict, source: str = "config") -> RunConfig:
    """Validates a config dict against the schema of its `task` (default `frames`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    task = data.get("task", "frames")
    if not isinstance(task, str) or task not in RUN_CONFIGS:  # a list or mapping cannot even be looked up
        raise ConfigError(f"{source}: key `task`: got {_short_repr(task)}: expected one of {', '.join(map(repr, RUN_CONFIGS))}")
    try:
        return RUN_CONFIGS[task].model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
