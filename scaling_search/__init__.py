"""scaling-search: search compound-scaling coefficients with short real trainings."""

__version__ = "0.1.0"
