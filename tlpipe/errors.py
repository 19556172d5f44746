"""The base of every failure tlpipe expects: bad settings or data, a refusal, a server away.

Their messages name the file, key or server and what to do, so the command line prints the
message alone (the traceback only with --verbose; MLflow runs keep it as the failure reason).
"""


class TlpipeError(Exception):
    """An expected failure; ``exit_code`` is what the command line exits with."""

    exit_code = 1


class SettingsError(TlpipeError, ValueError):
    """Settings or arguments that cannot be used."""

    exit_code = 2
