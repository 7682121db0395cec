"""The typed experiment config: one tree of frozen dataclasses, loaded from YAML plus `--set`.

May import: nothing else in pipeline.

Public names:
- `schema`: `ExperimentConfig` and its sections, `load_config`, `config_from_dict`,
  `config_to_dict`, `config_to_yaml`, `flatten_config`, `changed_keys`, `validate_config`.
- `typed`: the generic typed-dataclass loader behind it; `ConfigError`, `load_yaml`.
- `augmentation`: the `data.augmentation` section, `AugmentationConfig`.
- `ingest`: the `data.ingest` section, `IngestOptions` (Ray Data's knobs and CPU budget).
- `search`: the `tune` section, `TuneSection`, `SearchSpaceSection`, `AshaSection`,
  `LogUniform`, `validate_tune_section`.
"""
