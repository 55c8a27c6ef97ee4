"""CPU seconds per phase of one ``prefloop train`` run: where a preference run's extra cost goes.

Wraps the functions of each phase (the recorder, the learned reward, label rounds and their parts,
policy updates, evaluation, ...) with CPU-time accounting and runs the ordinary CLI. Times are
*exclusive*: a phase's seconds do not include the phases called inside it (the recorder's do not
include the env step below it), so the rows add up to the run's CPU time. CPU time
(``time.process_time``), not wall time, so that other processes on a shared machine do not count;
each wrapped call costs about a microsecond of accounting, which lands in its caller's row.

    python benchmarks/cpu_phases.py --json out.json -- --env CartPole-v1 --labels 50 --seed 0 --reward-source true
    python benchmarks/cpu_phases.py --json out.json -- --env CartPole-v1 --labels 50 --seed 0

Everything after ``--`` goes to ``prefloop train`` (``--no-progress`` and a fresh ``--run-dir``
under a temporary folder are added unless given).
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# (module, attribute path, phase): the wrapped callables. A module-level function is patched where
# its caller looks it up (``prefloop.training.loop.evaluate``, not its defining module).
PHASES: list[tuple[str, str, str]] = [
    ("prefloop.training.loop", "_train", "run (setup, final summary)"),
    ("stable_baselines3.common.base_class", "BaseAlgorithm.learn", "learn (SB3 bookkeeping)"),
    ("stable_baselines3.common.on_policy_algorithm", "OnPolicyAlgorithm.collect_rollouts", "rollouts (SB3 loop, buffer)"),
    ("stable_baselines3.common.off_policy_algorithm", "OffPolicyAlgorithm.collect_rollouts", "rollouts (SB3 loop, buffer)"),
    ("stable_baselines3.common.policies", "BasePolicy.predict", "policy forward"),
    ("stable_baselines3.common.policies", "ActorCriticPolicy.forward", "policy forward"),
    ("stable_baselines3.ppo.ppo", "PPO.train", "policy update"),
    ("stable_baselines3.sac.sac", "SAC.train", "policy update"),
    ("stable_baselines3.common.vec_env.dummy_vec_env", "DummyVecEnv.step_wait", "env step (DummyVecEnv)"),
    ("stable_baselines3.common.vec_env.dummy_vec_env", "DummyVecEnv.reset", "env step (DummyVecEnv)"),
    ("stable_baselines3.common.callbacks", "CallbackList.on_step", "callbacks per step"),
    ("stable_baselines3.common.callbacks", "CallbackList.on_rollout_end", "callbacks per rollout"),
    ("prefloop.envs.recorder", "VecSegmentRecorder.step_wait", "recorder per step"),
    ("prefloop.envs.recorder", "VecSegmentRecorder._cut", "recorder cuts"),
    ("prefloop.envs.learned_reward", "VecLearnedReward.step_wait", "learned-reward wrapper"),
    ("prefloop.training.callbacks", "RolloutRewardCallback._on_rollout_end", "learned-reward wrapper"),
    ("prefloop.reward_models.ensemble", "RewardEnsemble.predict", "learned-reward predict"),
    ("prefloop.training.loop", "first_labels", "first labels (round 1)"),
    ("prefloop.training.loop", "collect_random", "random steps before round 1"),
    ("prefloop.training.callbacks", "PreferenceCallback._on_rollout_end", "label rounds: schedule"),
    ("prefloop.training.learner", "PreferenceLearner.ask", "label rounds: ask"),
    ("prefloop.training.query", "MethodRule.__call__", "label rounds: query selection"),
    ("prefloop.reward_models.ensemble", "RewardEnsemble.preference_probs", "label rounds: query scoring"),
    ("prefloop.training.learner", "answer_pending", "label rounds: teacher answers"),
    ("prefloop.training.learner", "PreferenceLearner.fit", "label rounds: fit bookkeeping"),
    ("prefloop.reward_models.training", "RewardTrainer.fit", "label rounds: reward fit"),
    ("prefloop.training.learner", "normalize_on_reference", "label rounds: rescale"),
    ("prefloop.reward_models.ensemble", "RewardEnsemble.predict_segment_returns", "label rounds: segment returns"),
    ("prefloop.training.learner", "PreferenceLearner.publish_progress", "label rounds: publish progress"),
    ("prefloop.store", "PreferenceStore.add_pairs", "store writes"),
    ("prefloop.store", "PreferenceStore.labeled_pairs", "store reads"),
    ("prefloop.store", "PreferenceStore.counts", "store reads"),
    ("prefloop.training.callbacks", "relabel_replay_buffer", "replay relabel"),
    ("prefloop.training.callbacks", "RunState.checkpoint", "checkpoints"),
    ("prefloop.training.loop", "evaluate", "evaluation"),
]


class PhaseClock:
    """Exclusive CPU seconds per phase: a nested call's time is taken out of its caller's."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.inclusive: collections.Counter[str] = collections.Counter()  # with what runs inside
        self.calls: collections.Counter[str] = collections.Counter()
        self._stack: list[list[Any]] = []  # [phase, start, child seconds]

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [phase, time.process_time(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.process_time() - frame[1]
                self._stack.pop()
                self.seconds[phase] += elapsed - frame[2]
                if all(f[0] != phase for f in self._stack):  # not twice for a nested call of the same phase
                    self.inclusive[phase] += elapsed
                self.calls[phase] += 1
                if self._stack:
                    self._stack[-1][2] += elapsed
        return timed


def count_gc(clock: PhaseClock) -> None:
    """Python's cyclic garbage collector as a phase of its own (it runs inside whatever allocated;
    a run that keeps thousands of segments alive could pay for them at every full collection)."""

    def on_gc(event: str, info: dict[str, int]) -> None:
        if event == "start":
            clock._stack.append(["python gc", time.process_time(), 0.0])
        elif clock._stack and clock._stack[-1][0] == "python gc":
            frame = clock._stack.pop()
            elapsed = time.process_time() - frame[1]
            clock.seconds["python gc"] += elapsed
            clock.inclusive["python gc"] += elapsed
            clock.calls["python gc"] += 1
            if clock._stack:
                clock._stack[-1][2] += elapsed

    gc.callbacks.append(on_gc)


def install(clock: PhaseClock) -> None:
    """Patch every callable of :data:`PHASES` that exists in the installed versions."""
    for module_name, path, phase in PHASES:
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is None or not callable(getattr(owner, name, None)):
            continue  # not in the installed versions
        setattr(owner, name, clock.wrap(phase, getattr(owner, name)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the phases here as JSON")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then prefloop train's arguments")
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    if "--no-progress" not in train_args:
        train_args.append("--no-progress")
    tmp = None
    if "--run-dir" not in train_args:
        tmp = tempfile.TemporaryDirectory(prefix="cpu-phases-")
        train_args += ["--run-dir", f"{tmp.name}/run"]
    from prefloop.cli import main as cli_main

    clock = PhaseClock()
    install(clock)
    count_gc(clock)
    started = time.process_time()
    code = cli_main(["train", *train_args])
    total = time.process_time() - started
    run_dir = train_args[train_args.index("--run-dir") + 1]
    summary = json.loads(open(f"{run_dir}/summary.json").read()) if code == 0 else {}
    rows = {phase: round(s, 3) for phase, s in clock.seconds.most_common()}
    rows["outside (CLI, imports)"] = round(total - sum(clock.seconds.values()), 3)
    print(f"{'phase':34s} {'own CPU':>9s}  {'with inner':>10s}  {'calls':>9s}")
    for phase, s in rows.items():
        print(f"{phase:34s} {s:8.2f} s  {clock.inclusive.get(phase, s):8.2f} s  {clock.calls.get(phase, 0):9d}")
    print(f"{'total CPU':34s} {total:8.2f} s; run cpu_time_s {summary.get('cpu_time_s', float('nan')):.2f}, "
          f"eval return {summary.get('eval_return_mean', float('nan')):.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"argv": train_args, "total_cpu_s": total, "phases": rows,
                       "inclusive": {k: round(v, 3) for k, v in clock.inclusive.items()}, "calls": dict(clock.calls),
                       "summary": {k: summary.get(k) for k in ("cpu_time_s", "wall_time_s", "reward_learning_time_s",
                                                             "eval_return_mean", "eval_returns", "reward_model")}},
                      out, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
