"""Training one named run with Ray Train: the driver, the per-worker loop, state and run folder.

May import: pipeline.config, pipeline.console, pipeline.data, pipeline.tracking.

Public names:
- `driver`: `train_or_resume` (start, resume or report a run: the training job), `fit` (fit
  one run; what a Tune trial calls) with its `RunRequest` and `RunReporting`, `TrainOutcome`.
- `worker`: `train_loop_per_worker`, the loop Ray's TorchTrainer runs on every worker, and
  `train_one_epoch`.
- `epoch_meter`: what one epoch measures (input wait, timings, loss, progress);
  `EpochMeter`, `EpochResult`.
- `settings`: what the driver hands every worker; `LoopSettings`, `CheckpointMetadata`.
- `state`: the full training state, built fresh, saved to and restored from one checkpoint;
  `TrainingState`, `build_training_state`, `build_training_model`, `read_progress`.
- `device`: the device features a worker trains with (AMP, channels_last, SyncBatchNorm);
  `DeviceFeatures`, `device_features`, `autocast`.
- `step`: one training step without Ray, shared by the worker and the GPU check;
  `batch_to_device`, `forward_loss`, `optimisation_step`.
- `validation`: exact validation inside the workers, counts summed over workers; `validate`.
- `epoch_logging`: each epoch Ray Train registers, logged to MLflow from its controller;
  `EpochsToMlflow`, `log_checkpoint_history`.
- `startup`: the start-up marks and `time_to_first_step_s`; `first_epoch_timeline`,
  `phase_seconds`.
- `connection`: joining the Ray cluster with the variables workers need, or starting a local
  instance whose processes find its State API; `connect`, `init_arguments`,
  `start_local_instance`.
- `failures`: worker and node failures; `failure_config`, `workers_not_placed`,
  `NonFiniteLossError`, `WorkersNotPlacedError`.
- `run_folder`: `<storage>/<run name>/`, its `config.yaml`, `COMPLETE.json` and checkpoints;
  `default_run_name`, `storage_root`, `run_folder`, `stored_config`, `completed_summary`,
  `best_checkpoint`, `latest_checkpoint`, `latest_progress`.
- `hooks`: extension points of the loop, installed by tests only; `TrainingHook`,
  `TrainingHooks`, `LoopPosition`, `hooks_from_environment`.
"""
