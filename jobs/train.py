"""Train APCNet with Ray Train.

    python jobs/train.py                       # the embedded default, configs/synthetic.yaml
    python jobs/train.py --config configs/voc_r50.yaml --set data.path=data/voc --name voc-a
    python jobs/train.py --name voc-a          # resume voc-a with the config it started with
    python jobs/train.py --register demo       # and register the best checkpoint as model demo

With no arguments it trains the embedded default: the synthetic data set, the small resnet18
APCNet, two CPU workers, the local MLflow store. A new run is named
`<config stem>-<YYYYmmdd-HHMMSS>`; naming an unfinished run resumes it, naming a finished one
says so and exits 0. Works the same under `ray job submit --working-dir . -- python jobs/train.py`.

The console: a header (run, data, model, workers and their nodes, MLflow and how to open its
UI), a progress bar over each epoch's iterations, one line per epoch, the summary. A run that
finishes now ends with a picture of a few validation images (image | ground truth |
prediction), written to its folder and its MLflow run, whose path closes the summary.
`--verbose` adds Ray's own logs. With `--register NAME` (or `tracking.register_model`) the
finished run's best checkpoint becomes a new version of the MLflow model NAME, ready for
`mlflow models serve -m models:/NAME/VERSION`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import traceback

from jobs.cli import add_config_arguments, add_register_argument, job_parser, run_job
from pipeline.config.schema import ExperimentConfig, load_config
from pipeline.console.header import RunStart, labelled
from pipeline.evaluate.registry import RegistrationRequest, model_to_register, register_run
from pipeline.train.driver import TrainOutcome, train_or_resume
from pipeline.train.run_folder import default_run_name, storage_root, stored_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = job_parser(__doc__)
    add_config_arguments(
        parser, DEFAULT_CONFIG, name_help="run name; an existing unfinished run is resumed"
    )
    add_register_argument(parser, "the finished run's best checkpoint")
    return parser.parse_args(argv)


def print_header(start: RunStart) -> None:
    """What the run is about to do; the workers' nodes follow once they are placed."""
    state = (
        f"resumed after epoch {start.resumed_after_epoch}" if start.resumed_after_epoch else "new"
    )
    print(labelled("run", f"{start.run_name} ({state}), folder {start.run_folder}"))
    sizes = ", ".join(f"{split} {rows}" for split, rows in start.split_rows.items())
    print(labelled("data", f"{start.dataset}: {sizes} images, {start.num_classes} classes"))
    print(labelled("", start.data_path))
    print(labelled("model", start.model))
    print(
        labelled(
            "training",
            f"{_count(start.epochs, 'epoch')} x {_count(start.iterations_per_epoch, 'iteration')}, "
            f"global batch {start.global_batch_size}",
        )
    )
    resources = ", ".join(
        f"{name} {amount:g}" for name, amount in start.resources_per_worker.items()
    )
    device = "GPU" if start.use_gpu else "CPU"
    print(labelled("workers", f"{start.num_workers} {device} workers, each {resources}"))
    if start.tracking_uri is None:
        print(labelled("MLflow", "off (tracking.enabled: false)"))
    else:
        # Imported only with tracking on: a run with it off never imports MLflow, so it runs
        # where MLflow is not installed (a GPU machine with PyTorch and Ray only).
        from pipeline.tracking.runs import ui_command

        print(labelled("MLflow", f"{start.tracking_uri}, experiment {start.experiment}"))
        print(labelled("", ui_command(start.tracking_uri)))


def print_summary(outcome: TrainOutcome) -> None:
    if outcome.status == "already_complete":
        print(
            f"run {outcome.run_name} is already complete (folder {outcome.run_folder}); nothing to do"
        )
    else:
        print(f"run {outcome.run_name} finished (folder {outcome.run_folder})")
    print(f"  best val_miou            {_number(outcome.best_val_miou)}")
    print(f"  majority-class val_miou  {_number(outcome.majority_baseline_miou)}")
    if outcome.best_val_miou is not None and outcome.majority_baseline_miou:
        print(
            f"  ratio                    {outcome.best_val_miou / outcome.majority_baseline_miou:.2f}x"
        )
    print(f"  best checkpoint          {outcome.best_checkpoint}")
    print(f"  latest checkpoint        {outcome.latest_checkpoint}")
    if outcome.mlflow_run_id:
        print(f"  MLflow run id            {outcome.mlflow_run_id}")


def print_picture(outcome: TrainOutcome, config: ExperimentConfig, debug: bool) -> None:
    """Draw the run that has just finished on a few validation images; print where it went."""
    # Imported here, after training: it imports torch (about 1.2 s), which the driver does not
    # need before the run starts.
    from pipeline.evaluate.preview import write_training_preview

    try:
        location = write_training_preview(outcome, config)
    except Exception as error:
        # The run has succeeded: its checkpoints, COMPLETE.json and MLflow run are whole, and
        # the same name again only reports it complete. Exiting non-zero over a picture would
        # tell scripts and `ray job submit` that training failed, so the job still exits 0,
        # but says so on the console and on stderr, and how to draw the same grid later.
        if debug:
            traceback.print_exc()
        print(f"  picture                  not written ({type(error).__name__})")
        print(
            f"warning: the picture of run {outcome.run_name} was not written: {error}. Its "
            f"training results are complete; python jobs/evaluate.py --run {outcome.run_name} "
            "logs the same grid",
            file=sys.stderr,
        )
        return
    print(f"  picture                  {location or 'none (no validation images)'}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config_path = args.config or DEFAULT_CONFIG
    # The config and its overrides are checked here, before train() starts Ray.
    config = load_config(config_path, args.overrides)
    run_name = args.name or default_run_name(config_path)
    if args.name and not args.config and not args.overrides:
        # Naming an existing run alone resumes it with the config it was started with.
        config = stored_config(run_name, storage_root(config)) or config
    model_name = model_to_register(config, args.register)  # before training, not after
    outcome = train_or_resume(config, run_name, on_start=print_header)
    print_summary(outcome)
    if outcome.status == "finished":  # a complete run named again got its picture back then
        print_picture(outcome, config, args.debug)
    if model_name and outcome.status == "finished":
        registration = register_run(
            RegistrationRequest(
                run=run_name,
                model_name=model_name,
                storage_path=storage_root(config),
                tracking_uri=config.tracking.tracking_uri,
                experiment=config.tracking.experiment_name,
            )
        )
        print("\n".join(registration.describe()))
    elif model_name:
        print(
            f"  registered only when it finishes; to register it now: python jobs/register.py "
            f"--run {run_name} --model-name {model_name}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
