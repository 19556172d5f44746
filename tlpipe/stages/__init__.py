"""One module per pipeline stage, named as the stage; ``tlpipe.pipeline`` lists them in order.

Each module has ``run(context, params, project)``: the stage inside its MLflow child run, what
the Prefect task and the DVC stage both call. Most also have ``compute(params, project)``: the
same work without MLflow, reading and writing only the files under ``outputs/``.
"""
