"""Data sets as Parquet shards: the format and its manifest, writing it, reading it into Ray Data.

May import: pipeline.config.

Public names:
- `shards`: the format and reading it; `Manifest`, `ShardRow`, `SHARD_SCHEMA`, `load_manifest`,
  `read_shard_rows`, `manifest_digest`, `DatasetError`.
- `shard_writer`: `ShardWriter`, `prepare_output`, `write_manifest` (the manifest last).
- `shard_source`: Ray Data's reader of a split's shards, planned from the manifest alone, its
  blocks in a seeded order per pass; `read_shards`, `completed_passes`.
- `transforms`: paired image/mask augmentation in numpy and OpenCV (no torch); `decode_image`,
  `decode_mask`, `augment_sample` (uint8 out), `normalize`, `mean_colour`.
- `ingest`: Ray Data datasets for Ray Train; `training_datasets`, `train_dataset`,
  `eval_dataset`, `data_config`.
- `majority_baseline`: `class_pixel_counts`, `majority_class_miou`.
- `training_data`: the data set a config trains on, the synthetic one generated on first use;
  `load_training_data`, `data_set_path`, `TrainingData`.
- `formats`: one converter per raw data set, the synthetic one included;
  `formats.prepare.prepare_dataset`.
"""
