"""Training one named run with Ray Train: the driver, the per-worker loop, state and run folder.

May import: pipeline.config, pipeline.data, pipeline.tracking.

Public names:
- `driver`: `train` (start, resume or report a run), `fit_run` (what a Tune trial calls),
  `TrainOutcome`.
- `connection`: joining the Ray cluster with the variables workers need, or starting a local
  instance whose processes find its State API; `connect`, `init_arguments`,
  `start_local_instance`.
- `console`: what the jobs and their Ray processes print, quiet unless `--verbose`
  (`APCNET_VERBOSE`); `quiet_this_process`, `variables_for_workers`, `epoch_bar`,
  `progress_over`, `RunStart` (the training header), `labelled`, `quiet_native_stderr`.
- `stderr_filter`: dropping lines native code writes to the driver's stderr;
  `filtered_stderr`.
- `failures`: worker and node failures; `failure_config`, `NonFiniteLossError`,
  `WorkersNotPlacedError`.
- `entry`: `train_loop_per_worker`, the function Ray Train runs on each worker: it asks for
  the worker's shard and starts the first epoch's data while torch and the loop import on a
  thread.
- `worker`: the loop it then runs; `run_training`, `train_one_epoch`.
- `settings`: what the driver hands every worker, in a module without torch (Ray Train's
  controller unpickles it too); `LoopSettings`, `RunDescription`.
- `process_group`: torch.distributed's group for the workers, formed without torch in the
  controller and joined by the loop; `TorchProcessGroupConfig`, `join_process_group`.
- `batches`: a worker's batches for one epoch; `epoch_batches`, `TimedBatches` (input wait),
  `EarlyStartedBatches` (the first epoch's data starting beside the model build).
- `step`: one training step without Ray, shared by the worker and the GPU check;
  `batch_to_device`, `forward_loss`, `optimisation_step`.
- `validation`: exact validation inside the workers, counts summed over workers; `validate`.
- `state`: the full training state in one checkpoint; `TrainingState` (`save`,
  `restored_from`), `read_progress`, `CHECKPOINT_FILE`.
- `model`: `build_training_state`, `build_training_model`, `device_features` (AMP,
  channels_last, SyncBatchNorm).
- `run_folder`: `<storage>/<run name>/`, its `config.yaml`, `COMPLETE.json` and checkpoints;
  `default_run_name`, `storage_root`, `run_folder`, `stored_config`, `completed_summary`,
  `best_checkpoint`, `latest_checkpoint`, `last_completed_epoch`.
- `hooks`: extension points of the loop, installed by tests only; `TrainingHook`,
  `LoopPosition`, `hooks_from_environment`.
"""
