"""Converters from raw data set layouts to the shard format (see pipeline/data/shards.py).

Part of `pipeline.data`, under its import rule: it uses `shards` and `shard_writer` beside it.

May import: pipeline.config.

Public names:
- `prepare`: what jobs/prepare_data.py calls; `prepare_dataset`, `PrepareOptions`, `FORMATS`.
- `voc`, `ade20k`, `pascal_context`, `cityscapes`, `folder`: one converter each
  (`plan_voc`, `plan_ade20k`, ...), returning a `common.DatasetPlan`.
- `writing`: `write_plan`, `WriteOptions`: any plan into shards, the manifest last.
- `validation`: `convert_sample`, `encode_mask_png`: read, check and encode one raw sample.
- `synthetic`: the built-in data set; `write_synthetic`, `render_sample`, `GENERATOR_VERSION`.
"""
