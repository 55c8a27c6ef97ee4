"""Benchmarks: sweeps of training runs over envs, teachers and seeds, and their report.

:mod:`~prefloop.bench.sweep` plans and runs the jobs (processes or Ray) and writes one row per run;
:mod:`~prefloop.bench.report` aggregates rows into tables and plots.
"""

from prefloop.bench.sweep import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
