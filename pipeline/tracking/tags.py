"""Every MLflow tag name the project reads or writes, and the values of the `apcnet.kind` tag.

One home, so that the code that writes a tag and the code (or the person in the MLflow UI)
that searches for it cannot drift apart. `mlflow.*` tags are MLflow's own: the UI shows them
(nesting, the description, the source commit).
"""

# MLflow's own tags.
PARENT_RUN_TAG = "mlflow.parentRunId"
DESCRIPTION_TAG = "mlflow.note.content"
GIT_COMMIT_TAG = "mlflow.source.git.commit"

# Identity: a run is found again by this name (`pipeline.tracking.runs.find_run`).
RUN_NAME_TAG = "apcnet.run_name"

# What a run is: one of the KIND_* values below.
KIND_TAG = "apcnet.kind"
KIND_SEARCH = "search"
KIND_TRIAL = "trial"
KIND_EVALUATION = "evaluation"

# Training runs.
DATA_MANIFEST_TAG = "apcnet.data_manifest"
MANIFEST_HASH_TAG = "apcnet.data_manifest_sha256"
# How a training run ended when its MLflow status alone does not say (e.g. a non-finite loss).
RUN_OUTCOME_TAG = "apcnet.status"
# "rank:node id" of every training worker, comma-separated (the latest attempt's placement).
WORKER_NODES_TAG = "apcnet.worker_nodes"

# Tune trials (child runs of a search).
TRIAL_ID_TAG = "apcnet.trial_id"
TRIAL_STATUS_TAG = "apcnet.trial_status"
EPOCHS_RUN_TAG = "apcnet.epochs_run"

# A search's parent run: its best trial. `best.<parameter>` holds each of its parameters.
BEST_TRIAL_TAG = "apcnet.best_trial"
BEST_RUN_NAME_TAG = "apcnet.best_run_name"
BEST_PARAMETERS_TAG = "apcnet.best_parameters"
BEST_PARAMETER_TAG_PREFIX = "best."

# Evaluation runs: the training run whose model they evaluate, and how.
TRAINING_RUN_NAME_TAG = "apcnet.training_run_name"
TRAINING_RUN_ID_TAG = "apcnet.training_run_id"
SPLIT_TAG = "split"

# Registered model versions: the training run (TRAINING_RUN_*), its data (MANIFEST_HASH_TAG)
# and its best val mIoU.
VAL_MIOU_TAG = "apcnet.val_miou"
TEST_TIME_MODE_TAG = "mode"
