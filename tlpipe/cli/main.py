"""The ``tlpipe`` command line: the app, and which command comes from which group.

Commands only parse their arguments and call the library. Heavy imports happen inside them,
after the runtime defaults are applied: Prefect and MLflow read their settings when first
imported, and a command that only reads the registry does not pay for torch. Expected failures
(``tlpipe.errors.TlpipeError``, and a folder tlpipe cannot write) end as their message and
exit code; ``--verbose`` adds the traceback.

Exit codes: 0 done; 1 failed or refused (data validation, the promotion gate, a server or lock,
a rebuilt model that does not match); 2 unusable settings or arguments, including data whose
classes differ from the registered model's.
"""

from __future__ import annotations

import traceback
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from tlpipe.cli import data, pipeline, registry, schedule, serving, stack
from tlpipe.cli.common import options
from tlpipe.cli.stack import stack_app
from tlpipe.errors import TlpipeError, is_expected, unwritable_message


class _Commands(TyperGroup):
    """Every command's expected failures end as their message and exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (TlpipeError, OSError) as error:
            if not is_expected(error):
                raise
            if options["verbose"]:
                traceback.print_exc()
            typer.secho(unwritable_message(error) or str(error), fg=typer.colors.RED, err=True)
            raise typer.Exit(getattr(error, "exit_code", 1)) from None


app = typer.Typer(
    cls=_Commands,
    help="tlpipe: turn folders of labelled images into a validated, tracked, registered "
         "image classifier (Prefect + MLflow + Great Expectations + PyTorch). Start with "
         "`tlpipe init DIR --data FOLDER`, then `cd DIR && tlpipe run`.",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts name folders like [test/], which rich would eat
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show every log line (Prefect's task states, the whole "
                                "leaderboard) and the Python traceback of a failure.")
        ] = False) -> None:
    options["verbose"] = verbose


# In the order `tlpipe --help` lists them: the pipeline, the data, the registry, serving,
# keeping it fresh, the team stack.
for command in (pipeline.init, pipeline.run, data.validate, data.audit):
    app.command()(command)
app.command("demo-data")(data.demo_data)
for command in (registry.models, registry.promote, registry.rollback, registry.lineage,
                registry.verify, registry.reproduce, serving.predict, serving.export,
                schedule.retrain, schedule.schedule):
    app.command()(command)
app.command()(stack.ui)
app.add_typer(stack_app, name="stack")


if __name__ == "__main__":
    app()
