"""MLflow: one run per named training run, found again by its name; comparing runs.

May import: pipeline.config.

Public names:
- `runs`: `RunTracker` (open or reopen a run by name, log without duplicate steps),
  `find_run`, `child_runs`, `resolve_tracking`, `ui_command` (how to open the MLflow UI);
  the one run search, every page (`search_runs`), and its filters (`run_name_query`,
  `children_query`); the commit of the code a run came from (`git_commit`).
- `tags`: every MLflow tag name the project reads or writes (`RUN_NAME_TAG`, `KIND_TAG`, ...).
- `retry`: the one retry rule (MLflow's own HTTP retries, bounded) and MLflow client;
  `call_with_retry`, `tracking_client`, `RetryPolicy`, `TrackingUnavailableError`.
- `tables`: one table as text, CSV or markdown; `text_table`, `csv_table`, `markdown_table`.
- `compare`: `collect_runs`, `sort_runs`, `format_runs_table`, `plot_curves`.
- `conventions`: MLflow's own: the experiment kind tag (`create_experiment`,
  `tag_experiment_kind`), data set splits as dataset inputs (`split_inputs`).
"""
