"""scaling-search: search compound-scaling coefficients with short real trainings.

From Python: ``run_search`` runs a search (the baseline may be your own function), ``load_run`` reads a run folder.
"""

from .api import RunFolder, load_run, run_search
from .version import __version__

__all__ = ["RunFolder", "__version__", "load_run", "run_search"]
