"""The flows the command line starts. The CLI imports Prefect through this module only, and
only inside the commands that start a flow: Prefect reads its settings when first imported."""

from flows.promote import promote_flow
from flows.retrain import retrain_flow, serve_retrain
from flows.train import train_flow

__all__ = ["promote_flow", "retrain_flow", "serve_retrain", "train_flow"]
