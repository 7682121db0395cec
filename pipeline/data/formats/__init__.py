"""Converters from raw data set layouts to the shard format (see pipeline/data/shards.py).

One module per raw format returns a `DatasetPlan`; `writing.write_plan` writes any plan;
`prepare.prepare_dataset` picks the converter from options (what jobs/prepare_data.py calls).
"""
