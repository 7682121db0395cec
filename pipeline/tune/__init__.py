"""Ray Tune searches: one training run per trial, ASHA on top, a nested MLflow run per trial.

May import: pipeline.config, pipeline.console, pipeline.data, pipeline.train, pipeline.tracking.

Public names:
- `search`: `run_search` (start or resume a named search), `SearchOutcome`.
- `space`: a trial's parameters and the config they set; `searched_values`,
  `apply_trial_parameters`, `describe_parameters`.
- `trials`: the search's MLflow bookkeeping; `TrialStatusCallback`, `TrialRow`,
  `format_trials_table`, `record_search_result`.
"""
