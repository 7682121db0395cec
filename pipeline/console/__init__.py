"""What a job's console shows, for every job and the Ray processes it starts.

May import: nothing else in pipeline.

Public names:
- `logs`: which logs show, quiet unless `--verbose` (`APCNET_VERBOSE`), in the driver and
  every Ray process of the job; `verbose`, `set_before_ray_import`, `quiet_this_process`,
  `variables_for_workers`, `ray_init_options`, `train_logging_config`,
  `quiet_training_worker`.
- `progress`: a training epoch's progress (`epoch_bar`, `ConsoleMode`: a live bar, plain
  lines or nothing) and a driver's own (`progress_over`).
- `header`: a job's header lines; `labelled`, `placement_line`, `RunStart`.
"""
