"""Training: the loop that turns labels into a reward model and the reward model into a policy.

Read in this order: :mod:`~prefloop.training.config` (what a run is), :mod:`~prefloop.training.loop`
(one run, top to bottom), :mod:`~prefloop.training.learner` (rounds of querying, labelling and
fitting), :mod:`~prefloop.training.callbacks` (the hooks into the SB3 algorithm's steps). The rest
are the parts they use: the label schedule and pacing, query selection, exploration, algorithms,
fits in a second process (:mod:`~prefloop.training.background_fit`), checkpoints and the run folder.
"""
