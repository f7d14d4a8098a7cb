"""gradscope: measure how weight-gradient distributions narrow under iterative pruning,
and turn that narrowing into SILO learning-rate schedules."""

__version__ = "0.1.0"


class GradscopeError(Exception):
    """An error with a message meant for the user (bad input, missing files, bad flags).

    The CLI prints these as one line and exits with status 2, never a traceback.
    """
