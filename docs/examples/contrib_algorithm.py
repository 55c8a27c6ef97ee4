"""Any SB3 or sb3-contrib algorithm class with its policy (pip install 'prefloop[contrib]')."""

import json
import time
from pathlib import Path

from sb3_contrib import TRPO

from prefloop.training.config import TrainConfig
from prefloop.training.loop import train

config = TrainConfig(
    env_id="CartPole-v1",
    run_dir=Path("runs") / time.strftime("trpo-%Y%m%d-%H%M%S"),
    algo=TRPO,  # Christiano et al. (2017) trained their MuJoCo policies with TRPO
    policy="MlpPolicy",  # a name, a policy class, or its import path
    algo_kwargs={"n_steps": 512, "policy_kwargs": {"net_arch": [32, 32]}},
    labels=30,
    steps=4000,
    eval_episodes=3,
    progress_bar=False,
)
result = train(config)
print("labels:", result.labels_used, "eval return:", result.eval_return_mean)
print("config.json algo:", json.loads((config.run_dir / "config.json").read_text())["algo"])
