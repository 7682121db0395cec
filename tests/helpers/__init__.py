"""The one home of the tests' helpers; a test module imports them as `helpers.<module>` (pytest
puts tests/ on sys.path). No test module imports another.

- `datasets`: tiny prepared data sets: `tiny_synthetic_set`, `png_bytes`, `write_split`,
  `write_shard_set`.
- `faults`: test-only fault injection: `faults.training` (hooks that kill a worker or poison
  the loss, pickled by value to Ray workers) and `faults.tune` (`InterruptAfterTrials`).
- `import_probe`: `modules_imported_by`, what a fresh interpreter imports for a program.
- `jobs`: the jobs as a user runs them, one environment policy: `REPO_ROOT`, `RayMode`,
  `job_environment`, `run_job_process`, `start_job_process`, `job_module`, `job_main`.
- `local_cluster`: the replica of the cluster as the module-scoped fixture `local_cluster`
  (`local_cluster_fixture`, `LocalCluster`, `clean_environment`).
- `metadata`: `numbered_classes_metadata`, a checkpoint's metadata without a data set.
- `mlflow_server`: MLflow's servers on the loopback: `MlflowServer`, `start_mlflow`,
  `start_tracking_server`, `start_model_server`.
- `reference_checkpoint`: reference-toolbox state dicts: `StateDict`, `randomise_batchnorms`,
  `reference_state_dict`.
- `runs`: training runs: `tiny_config`, `FinishedRun`, `write_checkpoint`, `run_without_ray`,
  `BEST_VAL_MIOU`, `mlflow_run_id`, `metric_steps`.
"""
