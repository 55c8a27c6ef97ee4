"""prefloop: reinforcement learning from human preferences.

The data flows env -> segments -> pairs -> labels -> reward model -> policy:

- ``prefloop.envs``: Gymnasium / SB3 wrappers that record segments and swap in the learned reward.
- ``prefloop.store``: the preference store (segments, pairs, labels) on SQLAlchemy.
- ``prefloop.teachers`` and ``prefloop.query``: who answers which pairs.
- ``prefloop.reward_models``: Bradley-Terry reward ensembles.
- ``prefloop.loop``: the training schedule that ties them to a stable-baselines3 algorithm.
"""

__version__ = "0.1.0"
