"""Why a run could not start or had to stop."""


class TrainingError(RuntimeError):
    """Training could not start or had to stop; the message says why."""


class TrainingDiverged(TrainingError):
    """The loss stayed NaN/inf for `max_bad_steps` steps in a row."""
