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

Layout: `sections.py` (train, tracking, export: every task's), one file per
task's schema (`frames.py`, `autoencoder.py`, `recommender.py`, `dialogue.py`),
`yaml12.py` (how YAML is read) and `load.py` (files, overrides, messages).
"""

from training.config.autoencoder import Anomaly, AutoencoderData, AutoencoderModel, AutoencoderRun
from training.config.dialogue import DialogueData, DialogueRNNModel, DialogueRun, Samples
from training.config.frames import FrameCNNModel, FramesData, FramesRun
from training.config.load import RUN_CONFIGS, load_config, parse_override, validate
from training.config.recommender import Columns, NCFModel, RecommenderData, RecommenderRun
from training.config.sections import Export, RunConfig, Tracking, Train, tracking_uri_problem
from training.config.yaml12 import yaml_load

__all__ = [
    "Anomaly", "AutoencoderData", "AutoencoderModel", "AutoencoderRun", "Columns", "DialogueData", "DialogueRNNModel",
    "DialogueRun", "Export", "FrameCNNModel", "FramesData", "FramesRun", "NCFModel", "RUN_CONFIGS", "RecommenderData",
    "RecommenderRun", "RunConfig", "Samples", "Tracking", "Train", "load_config", "parse_override", "tracking_uri_problem",
    "validate", "yaml_load",
]
