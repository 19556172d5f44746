"""The names of the tags tlpipe puts on MLflow runs and model versions, in one place.

Lineage tags go on pipeline runs and on the model versions they register; promotion tags on
the versions a decision was about; the ``tlpipe.*`` tags are tlpipe's own bookkeeping.
"""

# Lineage: where a run or model version came from.
GIT_COMMIT, GIT_DIRTY, GIT_CHANGED = "git_commit", "git_dirty", "git_changed"
DATA_DVC_MD5 = "data_dvc_md5"            # DVC's hash of the data folder: the data version
DATA_FINGERPRINT = "data_fingerprint"    # hash of the validated manifest
DVC_LOCK_SHA256 = "dvc_lock_sha256"
PARAMS_HASH = "params_hash"
BACKBONE, WEIGHTS_DIGEST = "backbone", "weights_digest"
HEAD = "head"                            # the ladder's choice, e.g. "logistic C=0.01"
FINETUNE = "finetune"                    # kept | not kept: why | skipped
TRIGGER = "trigger"                      # flow | dvc
PREFECT_FLOW_RUN_ID = "prefect_flow_run_id"
PIPELINE_RUN_ID = "pipeline_run_id"      # on a model version: the run that trained it
MODEL_VERSION = "model_version"          # on a pipeline run: the version it registered
FAILURE_REASON = "failure_reason"
SMALL_TEST_SPLIT = "small_test_split"    # why the test figures are too noisy to trust
# Carried by a pipeline run and handed on to the model version it registers.
LINEAGE = (GIT_COMMIT, GIT_DIRTY, GIT_CHANGED, DATA_DVC_MD5, DATA_FINGERPRINT, DVC_LOCK_SHA256,
           PARAMS_HASH, BACKBONE, WEIGHTS_DIGEST, HEAD, FINETUNE, TRIGGER, PREFECT_FLOW_RUN_ID)

# Promotion decisions, on the model versions involved.
PROMOTION_PREFIX = "promotion."
VERDICT, SUMMARY, REASON = "promotion.verdict", "promotion.summary", "promotion.reason"
DECISION_RUN, COMPARED_WITH = "promotion.decision_run", "promotion.compared_with"
ROLLED_BACK_BY, RESTORED_BY = "promotion.rolled_back_by", "promotion.restored_by"

# tlpipe's bookkeeping on runs and on the registered model.
KIND, STAGE, PID, HOST, SESSION = ("tlpipe.kind", "tlpipe.stage", "tlpipe.pid", "tlpipe.host",
                                   "tlpipe.session")
CHAMPION_HISTORY, DECISION_KEY = "tlpipe.champion_history", "tlpipe.decision_key"
PENDING_DECISION = "tlpipe.pending_decision"  # on the registered model: an alias move part-way
FINISHED_BY = "tlpipe.finished_by"       # on a decision run another process completed or undid
CLASSES = "tlpipe.classes"               # on the registered model: its class list, as JSON
# On a model version: sha256 of the list of its stored files' digests (model_integrity.py).
ARTIFACTS_SHA256 = "tlpipe.artifacts_sha256"
PARENT_RUN = "mlflow.parentRunId"        # MLflow's own: how the UI nests child runs
# MLflow's own, on the experiment: it holds model training, not GenAI work (traces, judges).
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
MODEL_VERSIONS = "mlflow.modelVersions"  # MLflow's own, on a logged model: its versions
