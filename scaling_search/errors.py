"""The exception types the command line turns into exit statuses: 2 for bad input, 3 for a machine that failed."""


class UsageError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""


class MachineError(RuntimeError):
    """The machine, not the input, stopped the command (a device no worker could open): exit status 3."""
