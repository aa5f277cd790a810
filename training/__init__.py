"""reelml training: everything around a model (config, data, loop, tracking, export, CLI)."""

__version__ = "0.1.0"
