"""prefloop: reinforcement learning from human preferences.

The package is laid out in the order a segment travels (see docs/architecture.md):

- ``prefloop.envs``: Gymnasium / SB3 wrappers that record segments and swap in the learned reward.
- ``prefloop.reward_models``: Bradley-Terry reward ensembles and rater reliability.
- ``prefloop.store``: the preference store (segments, pairs, labels, raters) on SQLAlchemy.
- ``prefloop.datasets``: the open file formats a run's preferences are exported to and imported from.
- ``prefloop.teachers``: who answers pairs (people through the store, or simulated teachers).
- ``prefloop.training``: the loop that ties them to a stable-baselines3 algorithm.
- ``prefloop.bench``: sweeps of runs and their report.
- ``prefloop.ops``: ``prefloop doctor`` and a local PostgreSQL.
- ``prefloop.apps``: the Streamlit rater app and its clip worker.
- ``prefloop.cli``: the ``prefloop`` command.

A lower layer never imports a higher one (tests/test_layering.py).
"""

from prefloop import _moved

_moved.install()

__version__ = "0.1.0"
