"""Evaluation and prediction of a trained model on Ray Data actor pools, with exact counts.

May import: pipeline.config, pipeline.console, pipeline.data, pipeline.train, pipeline.tracking.

Public names:
- `evaluation`: `evaluate`, `EvaluationRequest`, `EvaluationReport` (what jobs/evaluate.py calls).
- `prediction`: `predict`, `PredictionRequest`, `PredictionReport` (what jobs/predict.py calls).
- `inference_model`: a trained model ready for inference, read from a checkpoint file (what the
  served model imports: no Ray, no training code); `InferenceModel`, `InferenceError`,
  `load_project_checkpoint`, `load_mmseg_checkpoint`, `checkpoint_file`, `model_num_classes`,
  `check_classes_match`.
- `run_checkpoint`: a training run's best checkpoint, by run name; `load_run_checkpoint`.
- `actor_pool`: the Ray Data actor pool a model runs on; `ActorPoolPlan`, `plan_actor_pool`,
  `prepare_actor_model`.
- `testtime`: `TestTimeOptions`, `predict_label_map` (whole, slide, multi-scale + flip).
- `counts`: `count_split_distributed`, `evaluate_locally`, `SplitCounts`.
- `pictures`: `palette_png`, `overlay`, `sample_grid`, `confusion_figure`.
- `preview`: `write_training_preview`, the picture a training run ends with (what
  jobs/train.py calls; the same grid as `evaluation.prediction_grid`).
- `export`: `export`, `ExportRequest` (what jobs/export.py calls): the model from a checkpoint,
  a run or a reference checkpoint, written by `apcnet.export`.
- `registry`: `register_run`, `RegistrationRequest`, `Registration` (what jobs/register.py and
  `--register` call), `model_to_register`, `load_registered_model` (evaluate's `--model`).
- `served_model`: `SegmentationPyfunc`, the MLflow pyfunc a registered model is; `image_batch`.
"""
