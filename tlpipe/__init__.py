"""tlpipe: folders of labelled images into a validated, tracked, registered classifier.

The library is grouped by the path the data takes; each folder's docstring says what it owns.

    data/       the files: manifest, validation rules, quarantine, data version, demo data
    vectors/    everything that decides a feature vector (its files are the cache key's code)
    audit/      what the embeddings say: label issues, near-copies, outliers, drift
    training/   heads (a registry), the ladder, the fine-tuning search, checkpoints, the model
    reports/    validation and audit pages, augmentation preview, plots, thumbnails
    registry/   registering, versions, verified loading, lineage, reproducing
    promotion/  held-out scores, the gate, decisions, alias moves, the lock, retrain policy
    serving/    scoring, the MLflow pyfunc, batch prediction, ONNX export
    ops/        MLflow tracking, project init, the DVC stage entry point, processes, the stack
    stages/     one module per pipeline stage, in the order of pipeline.py
    cli/        the command line: it only parses, and calls the above
    flows/, tasks/  (links to the repository's top-level folders) the Prefect flows and tasks

Shared by all: config (the one typed configuration), errors, tags, fsio, commands, paths,
devices, metrics. Above all of them, like cli/: api (``tlpipe.load``, the Python API).
"""


def load(model: str, project: str = ".", device: str | None = None):
    """A registered model, ready to ``predict`` image files: ``tlpipe.load("cats@champion")``.
    See ``tlpipe.api.load``."""
    from tlpipe.api import load as load_model

    return load_model(model, project, device)
