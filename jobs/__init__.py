"""Command-line entry points, each runnable as `python jobs/X.py` and under `ray job submit`."""
