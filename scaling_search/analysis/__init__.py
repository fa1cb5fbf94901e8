"""Analysis: trial ranking, scaling series tables, plots and the run report."""
