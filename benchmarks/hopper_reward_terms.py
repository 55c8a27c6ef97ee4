"""What did a Hopper preference run's reward model learn? Regress its per-step reward, and the true
one, on the terms of Hopper-v5's true reward: a constant (healthy reward, 1 per step alive), the
torso's forward velocity (observation index 5) and the control cost (sum of squared actions), over
every real step of the run's labelled segments.

    python benchmarks/hopper_reward_terms.py bench-out/mujoco-hopper/runs/Hopper-v5-sac-oracle-disagreement-700-s0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from prefloop.reward_models import load_reward_model

from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.rundir import RunDir


def reward_terms(run_dir: Path) -> dict[str, object]:
    model = load_reward_model(RunDir(run_dir).latest_checkpoint() / "reward_model")
    with PreferenceStore(sqlite_url(run_dir / "prefs.sqlite"), run_name=run_dir.name) as store:
        pairs = store.labeled_pairs()
    segments = list({id(s): s for p in pairs for s in (p.left, p.right)}.values())
    obs = np.concatenate([s.obs[: s.n_valid] for s in segments])
    actions = np.concatenate([s.actions[: s.n_valid] for s in segments])
    true = np.concatenate([s.true_rewards[: s.n_valid] for s in segments])
    learned = np.asarray(model.predict(obs, actions)).reshape(-1)
    terms = np.stack([np.ones(len(obs)), obs[:, 5], (actions**2).sum(axis=1)], axis=1)
    fits = {name: np.linalg.lstsq(terms, y, rcond=None)[0] for name, y in (("true", true), ("learned", learned))}
    return {
        "run_dir": str(run_dir), "pairs": len(pairs), "segments": len(segments), "steps": len(obs),
        **{f"{name}_coef_const_xvel_ctrl": [round(float(c), 4) for c in coef] for name, coef in fits.items()},
        **{f"{name}_const_over_xvel": round(float(coef[0] / coef[1]), 3) for name, coef in fits.items()},
        "learned_over_true_scale": round(float(fits["learned"][1] / fits["true"][1]), 3),
        "per_step_pearson": round(float(np.corrcoef(true, learned)[0, 1]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    for run_dir in parser.parse_args().run_dirs:
        print(json.dumps(reward_terms(run_dir)))


if __name__ == "__main__":
    main()
