"""Training one named run with Ray Train: the driver, the per-worker loop, state and run folder.

May import: pipeline.config, pipeline.data, pipeline.tracking.

Public names:
- `driver`: `train` (start, resume or report a run), `fit_run` (what a Tune trial calls),
  `TrainOutcome`.
- `connection`: joining the Ray cluster with the variables workers need, or starting a local
  instance whose processes find its State API; `connect`, `init_arguments`,
  `start_local_instance`.
- `console`: what the jobs and their Ray processes print, quiet unless `--verbose`
  (`APCNET_VERBOSE`); `set_before_ray_import`, `quiet_this_process`, `variables_for_workers`,
  `epoch_bar`, `progress_over`, `RunStart` (the training header), `labelled`.
- `failures`: worker and node failures; `failure_config`, `workers_not_placed`,
  `NonFiniteLossError`, `WorkersNotPlacedError`.
- `worker`: `train_loop_per_worker`, the loop Ray's TorchTrainer runs on every worker;
  `train_one_epoch`.
- `settings`: what the driver hands every worker; `LoopSettings`, `RunDescription`,
  `ConsoleMode`.
- `batches`: a worker's batches for one epoch; `epoch_batches`, `TimedBatches` (input wait).
- `step`: one training step without Ray, shared by the worker and the GPU check;
  `batch_to_device`, `forward_loss`, `optimisation_step`.
- `validation`: exact validation inside the workers, counts summed over workers; `validate`.
- `state`: the full training state in one checkpoint; `TrainingState` (`save`,
  `restored_from`), `read_progress`, `CHECKPOINT_FILE`.
- `model`: `build_training_state`, `build_training_model`, `device_features` (AMP,
  channels_last, SyncBatchNorm).
- `run_folder`: `<storage>/<run name>/`, its `config.yaml`, `COMPLETE.json` and checkpoints;
  `default_run_name`, `storage_root`, `run_folder`, `stored_config`, `completed_summary`,
  `best_checkpoint`, `latest_checkpoint`, `latest_progress`.
- `hooks`: extension points of the loop, installed by tests only; `TrainingHook`,
  `LoopPosition`, `hooks_from_environment`.
"""
