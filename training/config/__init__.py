"""The run's configuration: the dataclass tree (schema), loading it from TOML and the command line, validation."""

from training.config.loader import RENAMED_KEYS, load_config, parse_overrides, to_dict
from training.config.schema import (
    Config,
    DataConfig,
    EmbeddingConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    TableConfig,
    TrainConfig,
)
from training.config.validate import ConfigError, validate

__all__ = [
    "RENAMED_KEYS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EmbeddingConfig",
    "EvalConfig",
    "ExportConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "TableConfig",
    "TrainConfig",
    "load_config",
    "parse_overrides",
    "to_dict",
    "validate",
]
