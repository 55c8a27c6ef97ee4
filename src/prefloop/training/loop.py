"""The preference loop: env -> segments -> pairs -> labels -> reward model -> policy, on SB3.

:func:`train` runs one whole run from a :class:`~prefloop.training.config.TrainConfig`:

1. a random policy plays for a few episodes; their segments give the first pairs, which the teacher
   labels, and the reward model is trained on them;
2. the SB3 algorithm learns on the learned reward (``VecLearnedReward``), while
   ``VecSegmentRecorder`` keeps cutting what the agent does into segments;
3. at each round of the label schedule the :class:`PreferenceCallback` selects new pairs, the
   teacher answers them through the store, the reward model trains again, and for off-policy
   algorithms the replay buffer is relabelled;
4. the final policy is evaluated on the true reward, and the run folder gets a summary and plots.

With ``reward_source="true"`` the same function trains the baseline on the env's own reward, with
the same algorithm, hyper-parameters, steps and evaluation, so the two are directly comparable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from threadpoolctl import threadpool_limits

from prefloop.credentials import url_password, url_without_password
from prefloop.envs import (
    EnvSpec,
    SegmentBuffer,
    VecLearnedReward,
    VecSegmentRecorder,
    check_can_render,
    make_env,
)
from prefloop.envs.observation_norm import check_normalizable, normalize_observations
from prefloop.plots import plot_learning_curve
from prefloop.reward_models import build_reward_model, load_reward_model
from prefloop.reward_models.config import member_factory_of
from prefloop.store import PreferenceStore, check_store_url, sqlite_url
from prefloop.teachers.base import StoreTeacher, Teacher, rater_ids_of
from prefloop.teachers.simulated import HUMAN_TEACHER, RECORDED_PREFIX
from prefloop.teachers.specs import build_simulated_teacher
from prefloop.training.algos import (
    algorithm_class,
    algorithm_name,
    check_algorithm_fits,
    is_off_policy,
    make_algorithm,
    relabel_replay_buffer,
    reset_critic_after_exploration,
    rewards_wait_for_rollout_end,
)
from prefloop.training.callbacks import (
    AtLastRolloutEnd,
    CheckpointCallback,
    CurveCallback,
    FinishFitCallback,
    PreferenceCallback,
    RolloutRewardCallback,
    RunState,
    StepProgressBar,
)
from prefloop.training.background_fit import start_background_fitter, wants_background_fit
from prefloop.training.checkpoints import CheckpointChoice, newest_usable_checkpoint
from prefloop.training.config import ConfigError, TrainConfig, config_differences
from prefloop.training.evaluation import evaluate, result_context
from prefloop.training.exploration import StateEntropyReward, SwitchableReward
from prefloop.training.human_time import human_time
from prefloop.training.first_round import first_labels
from prefloop.training.learner import PreferenceLearner
from prefloop.training.query import QueryRule
from prefloop.training.resume_state import restore_resume_state
from prefloop.training.rundir import RunDir, RunDirError
from prefloop.training.schedule import LabelRound, label_rounds
from prefloop.training.store_teachers import start_store_teachers, store_teachers

log = logging.getLogger("prefloop")


@dataclass
class RunResult:
    """What a run measured. Returns are on the env's true reward."""

    config: TrainConfig
    eval_return_mean: float
    eval_return_std: float
    eval_returns: list[float]
    labels_used: int
    wall_time_s: float
    cpu_time_s: float  # CPU time of this process and its background fits: a load-independent view of the cost
    reward_learning_time_s: float  # this process's: querying, answering, fitting or waiting for a background fit
    curve: list[dict[str, float]]
    reward_model: dict[str, float] = field(default_factory=dict)
    labels_fitted: int = 0  # labels the last reward-model fit saw (the rest came too late to be used)
    pairs_withdrawn: int = 0  # asked, still unanswered when the trainer stopped using labels
    human_time: dict[str, float] = field(default_factory=dict)  # prefloop.training.human_time: answer_s, span_s
    env_steps: int | None = None  # env steps the run took: whole rollouts, so it may pass config.steps
    background_fit_s: float = 0.0  # wall time of the fits done in the background process (config.background_fit)

    def to_json(self) -> dict[str, Any]:
        """Every field, the config as its own ``to_json`` writes it (summary.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"config": self.config.to_json()}


def build_vec_env(spec: EnvSpec, n_envs: int, seed: int) -> VecEnv:
    """``n_envs`` envs in one process, each ``EpisodeSeeder`` + ``Monitor`` (true episode returns)."""
    return DummyVecEnv([lambda i=i: Monitor(make_env(spec, seed=seed + 1000 * i)) for i in range(n_envs)])


def publish_run_info(store: PreferenceStore, config: TrainConfig, spec: EnvSpec) -> None:
    """What the rater app and clip worker need to know of the run, kept in the store itself so
    they work from a database URL alone: the env to re-render clips, its frame rate, the guideline."""
    probe = make_env(spec)
    fps = float(probe.metadata.get("render_fps") or 30)
    probe.close()
    store.set_meta("config", json.dumps(config.to_json()))
    store.set_meta("env_spec", json.dumps(spec.to_json()))
    store.set_meta("render_fps", str(fps))
    store.set_meta("guideline", config.guideline or "")


def initial_random_steps(config: TrainConfig) -> int:
    """Env steps of the random policy whose segments give the first pairs (counted in ``steps``);
    0 with unsupervised pre-training, whose exploration steps are the policy's own."""
    assert config.steps is not None and config.segment_length is not None
    if config.unsupervised_steps:
        return 0
    # enough for ~40 segments, and for every parallel env to get past its first cut (2 L steps)
    n_envs = config.n_envs or 1
    wanted = max(int(0.02 * config.steps), 40 * config.segment_length, 3 * config.segment_length * n_envs)
    steps = min(wanted, int(0.1 * config.steps))
    return max(n_envs, steps - steps % n_envs)  # what collect_random plays: whole steps of every env


def collect_random(venv: VecEnv, steps: int, seed: int) -> None:
    """Play uniformly random actions for ``steps`` env steps (the wrappers record segments)."""
    venv.action_space.seed(seed)
    venv.reset()
    for _ in range(max(1, steps // venv.num_envs)):
        venv.step(np.stack([venv.action_space.sample() for _ in range(venv.num_envs)]))


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_ready: Callable[[RunDir, str, str], None] | None = None,
    query_rule: QueryRule | None = None,
) -> RunResult:
    """Run one whole preference-learning run (or true-reward baseline) and write its run folder.

    Args:
        config: the run; with ``resume`` only ``run_dir`` is read and the rest comes from the folder.
        resume: continue the run in ``config.run_dir`` from its newest checkpoint.
        on_ready: called with (run folder, store URL, run name) once the store exists and the
            run's store teachers are started, before the first labels are asked: for what watches a
            run without teaching it (``prefloop run --teacher oracle`` shows its rater app's
            dashboard there). Raters who teach are the run's teacher: a
            :class:`~prefloop.teachers.base.StoreTeacher` such as ``prefloop.apps.teacher.RaterApp``.
        query_rule: your own pair selection (:class:`prefloop.training.query.QueryRule`): the same
            as ``config.query.method=query_rule`` (the cleaner spelling, kept in the config).

    The run folder is locked for the whole call (:meth:`RunDir.owned`): a second trainer on
    it is refused with this one's PID. The store teachers started for the run (the rater app,
    clock raters, yours) are stopped however it ends.

    Raises:
        prefloop.training.rundir.RunDirError: the folder exists without ``resume`` (or is missing with it),
            another trainer holds it, or (resume) the run is finished.
        prefloop.envs.EnvSetupError, prefloop.training.algos.AlgorithmError, ConfigError, ...: bad input,
            raised before anything is written; with ``resume`` that includes a config.json that
            disagrees with the run's store or checkpoint.
    """
    run_dir = RunDir(Path(config.run_dir))
    try:
        with run_dir.owned(existing=resume), contextlib.ExitStack() as cleanup:
            return _train(config, run_dir, resume=resume, on_ready=on_ready, cleanup=cleanup, query_rule=query_rule)
    except KeyboardInterrupt:
        raise_why_the_teacher_stopped(config.teacher)
        raise


def raise_why_the_teacher_stopped(teacher: object) -> None:
    """A store teacher that died for good may stop the trainer as Ctrl-C does (the rater app
    interrupts the main thread: it may be training, not waiting); its ``check_alive`` then says
    why, raised instead of a bare ``KeyboardInterrupt``. Returns when it is alive (a real Ctrl-C)."""
    check = getattr(teacher, "check_alive", None)
    if not isinstance(teacher, StoreTeacher) or not callable(check):
        return
    try:
        check()
    except Exception as why:
        raise why from None  # the interrupt was only its messenger


def _train(
    config: TrainConfig,
    run_dir: RunDir,
    *,
    resume: bool,
    on_ready: Callable[[RunDir, str, str], None] | None,
    cleanup: contextlib.ExitStack,
    query_rule: QueryRule | None = None,
) -> RunResult:
    started = time.perf_counter()
    cpu_started = time.process_time()
    if query_rule is not None:
        config = dataclasses.replace(config, query=dataclasses.replace(config.query, method=query_rule))
    given = config
    if resume:
        # config.json names the run's Python objects; the caller's config gives them back.
        config = run_dir.load_config().with_objects_of(given)
        config.check_objects()
    config = config.resolve()
    if resume:
        config = with_given_password(config, given.db_url)
    assert config.steps is not None and config.n_envs is not None and config.algo is not None
    torch.set_num_threads(config.torch_threads)
    # numpy's matmuls too: a second OpenBLAS thread spins after every batched reward predict (twice
    # the CPU time of a CartPole run); the caller's setting is restored when the run ends.
    cleanup.enter_context(threadpool_limits(config.torch_threads, user_api="blas"))
    spec = EnvSpec(config.env_id, config.env_kwargs, factory=config.env_factory)
    venv = build_vec_env(spec, config.n_envs, config.seed)
    teacher = check_run_inputs(config, spec, venv)
    checkpoint: Path | None = None
    if resume:
        choice = check_resume(run_dir, config)  # reads only; refuses before anything is written
        checkpoint = choice.checkpoint
        set_aside_damaged(choice)
    else:
        run_dir.create(config)
    log.info("run folder: %s", run_dir.path)

    learner: PreferenceLearner | None = None
    env: VecEnv = venv
    curve: list[dict[str, float]] = []
    initial_steps = 0
    if config.reward_source == "preferences":
        buffer = SegmentBuffer(config.segment_buffer)
        recorder = VecSegmentRecorder(venv, buffer, config.segment_length, seed=config.seed)
        if checkpoint is not None:
            reward_model = load_reward_model(checkpoint / "reward_model", member_factory=member_factory_of(config.reward_model))
        else:
            reward_model = build_reward_model(venv.observation_space, venv.action_space, config.reward_model, seed=config.seed)
        policy_reward = SwitchableReward(reward_model)
        env = VecLearnedReward(recorder, policy_reward)
        store_url = config.db_url or sqlite_url(run_dir.store_path)
        store = PreferenceStore(store_url, run_name=config.run_name or "default")
        publish_run_info(store, config, spec)
        answering = store_teachers(config, teacher)
        if answering:  # they answer through the store in their own time: the learner waits on it
            teacher = None
        learner = PreferenceLearner(config, store, reward_model, buffer, teacher,
                                    background_raters=len(rater_ids_of(answering)))
        initial_steps = initial_random_steps(config)
        learner.check_raters = start_store_teachers(answering, store_url, config.run_name or "default", cleanup)
        if on_ready is not None:
            on_ready(run_dir, store_url, config.run_name or "default")
    state = RunState(run_dir, curve, initial_steps, config.to_json())
    reward_env = env  # the learned reward's wrapper (preference runs): what a rollout's rewards come from
    if config.normalize_observations:  # the policy's view only: outermost, so segments keep the env's own
        env = normalize_observations(env)

    cls = algorithm_class(config.algo)
    if checkpoint is not None:
        saved = choice.state
        curve.extend(saved.get("curve", []))
        state.initial_steps = initial_steps = int(saved.get("initial_steps", initial_steps))
        model = cls.load(checkpoint / "policy.zip", env=env, tensorboard_log=str(run_dir.tensorboard_dir))
        restore_resume_state(checkpoint, model, learner.trainer if learner is not None else None)
        if learner is not None:
            learner.fit_history = list(saved.get("fit_history", []))
            learner.time_s = float(saved.get("reward_learning_time_s", 0.0))
        log.info("resuming %s at env step %d", run_dir.path, saved["env_step"])
    else:
        model = make_algorithm(config.algo, env, config.algo_kwargs, seed=config.seed,
                               tensorboard_dir=run_dir.tensorboard_dir, policy=config.policy)

    rounds: list[LabelRound] = []
    if learner is not None:
        rounds = label_rounds(config.labels, config.steps, config.schedule)
        if wants_background_fit(config, model, teacher_answers_at_once=learner.teacher is not None):
            learner.deferred_fits = True  # the worker starts now; until it is ready, fits are done here
            learner.fitter = start_background_fitter(store_url, config.run_name or "default", config.torch_threads)
            cleanup.callback(learner.close)

        def collect_first_segments(then: Callable[[], None]) -> None:
            if config.unsupervised_steps:  # PEBBLE: explore for state entropy, then ask
                policy_reward.current = StateEntropyReward()
                # A simulated teacher's first round at the last rollout's end: every exploration
                # segment is recorded, and its fit overlaps the policy's last exploration update.
                # (People's answers take minutes: they are asked once exploration's progress bar is done.)
                first_round = AtLastRolloutEnd(config.unsupervised_steps, then)
                model.learn(config.unsupervised_steps, callback=first_round if learner.teacher is not None else None,
                            progress_bar=config.progress_bar, tb_log_name="policy")
                first_round.call_if_missed()
                policy_reward.current = learner.reward_model
            else:
                collect_random(env, initial_steps, config.seed)
                then()
            if config.reset_critic:
                reset_critic_after_exploration(model, config.unsupervised_steps or 0)

        initial_fit_pending = first_labels(learner, collect_first_segments, rounds[0], initial_steps,
                                           checkpoint is not None, int(model.num_timesteps), curve)
        if is_off_policy(model):
            relabel_replay_buffer(model, learner.reward_model)

    remaining = config.steps - initial_steps - model.num_timesteps
    callbacks: list[BaseCallback] = []
    learned_returns = None
    if isinstance(reward_env, VecLearnedReward):
        reward_env.finished_returns.clear()  # the curve's learned returns start with the learned reward
        learned_returns = reward_env.finished_returns
        if rewards_wait_for_rollout_end(model):
            callbacks.append(RolloutRewardCallback(reward_env))  # first: before a refit at the same rollout's end
    callbacks.append(CurveCallback(initial_steps, max(1, config.steps // 200), curve, learned_returns))
    if learner is not None:
        preferences = PreferenceCallback(learner, rounds, initial_steps, state, initial_fit_pending)
        callbacks[:0] = [FinishFitCallback(preferences)]  # first: a background fit is back before a rollout's rewards
        callbacks.append(preferences)
    callbacks.append(CheckpointCallback(state, learner, initial_steps, config.checkpoint_every or max(1, config.steps // 10)))
    if config.progress_bar:  # paced by people (no simulated teacher): an ETA would be a guess
        callbacks.append(StepProgressBar(initial_steps, config.steps, with_eta=learner is None or learner.teacher is not None))
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=CallbackList(callbacks),
            progress_bar=False,
            reset_num_timesteps=model.num_timesteps == 0,
            tb_log_name="policy",
        )
    final_step = initial_steps + int(model.num_timesteps)
    if final_step != config.steps:
        log.warning("ran %d env steps for steps=%d: %s learns in whole rollouts (or training blocks) of its %d "
                    "parallel envs and finishes the one it is in; label rounds are asked at their ends",
                    final_step, config.steps, algorithm_name(config.algo), config.n_envs)
    state.checkpoint(model, learner, final_step)
    withdrawn = 0
    if learner is not None:
        # The trainer uses no label from here on: what is still unanswered is withdrawn, not served.
        withdrawn = learner.store.withdraw_unanswered()
        if withdrawn:
            log.info("withdrew %d unanswered pairs: training is over, they will not be shown to raters", withdrawn)
        learner.publish_progress("evaluating", final_step, curve, "Labelling is over; the final policy is being evaluated.")

    eval_returns = evaluate(model, spec, config.eval_episodes, seed=config.seed + 10_000)
    result = RunResult(
        config=config,
        eval_return_mean=float(np.mean(eval_returns)),
        eval_return_std=float(np.std(eval_returns)),
        eval_returns=eval_returns,
        labels_used=learner.store.counts()["labels"] if learner is not None else 0,
        wall_time_s=time.perf_counter() - started,
        cpu_time_s=time.process_time() - cpu_started + (learner.background_cpu_s if learner is not None else 0.0),
        reward_learning_time_s=learner.time_s if learner is not None else 0.0,
        curve=curve,
        reward_model=learner.fit_history[-1] if learner is not None and learner.fit_history else {},
        labels_fitted=max(0, learner.labels_at_last_fit) if learner is not None else 0,
        pairs_withdrawn=withdrawn,
        human_time=human_time(learner.store) if learner is not None else {},
        env_steps=final_step,
        background_fit_s=learner.background_fit_s if learner is not None else 0.0,
    )
    run_dir.write_result(result.to_json())
    if curve:
        title = f"{config.env_id} {algorithm_name(config.algo)} - " + (
            f"{result.labels_used} {config.teacher_name} labels" if learner is not None else "true reward"
        )
        plot_learning_curve(curve, run_dir.path / "learning_curve.png", title)
    env.close()
    if learner is not None:
        learner.publish_progress("finished", final_step, curve, f"run finished: eval return {result.eval_return_mean:.1f}",
                                 result=result_context(result.eval_return_mean, spec, config) if learner.teacher is None else None)
        learner.store.close()
    return result


def with_given_password(config: TrainConfig, given_url: str | None) -> TrainConfig:
    """The resumed ``config`` (its ``db_url`` saved without password) with the password of the
    same URL given again on this command line, if it was; the environment's otherwise."""
    if config.db_url and given_url and url_password(given_url) and url_without_password(given_url) == config.db_url:
        return dataclasses.replace(config, db_url=given_url)
    return config


def check_resume(run_dir: RunDir, config: TrainConfig) -> CheckpointChoice:
    """Everything ``--resume`` checks before it writes anything; returns the checkpoint to use.

    Refuses (one line each) a finished run (its summary stays as it is), a config.json that
    disagrees with the run's own record in its store or checkpoint (an edited env id or run name),
    and a store that does not hold the run. Says which checkpoint it uses when newer ones do not
    load (a truncated file), and falls back to the newest that does.
    """
    if run_dir.summary_path.exists():
        raise RunDirError(
            f"run {run_dir.path} is finished: summary.json holds its result and nothing was changed. "
            "To train further start a new run (new --run-dir); to rate or see its dashboard use "
            f"`prefloop rate --run-dir {run_dir.path}`"
        )
    current = config.to_json()
    preferences = config.reward_source == "preferences"
    choice = newest_usable_checkpoint(run_dir, reward_model=preferences, algo=config.algo)
    for path, why in choice.skipped:
        log.warning("checkpoint %s does not load (%s); it is skipped and kept as %s.damaged", path.name, why, path.name)
    if choice.skipped:
        to = choice.checkpoint.name if choice.checkpoint is not None else "the start (no checkpoint loads; labels are kept)"
        log.warning("resuming from %s", to)
    differences = config_differences(choice.state.get("config"), current)
    if preferences:
        url = config.db_url or sqlite_url(run_dir.store_path)
        if config.db_url or run_dir.store_path.exists():
            with PreferenceStore(url, run_name=config.run_name or "default", read_only=True) as store:
                recorded = store.get_meta("config")
            differences += config_differences(json.loads(recorded) if recorded else None, current)
    if differences:
        raise ConfigError(
            f"{run_dir.config_path} does not match the run it belongs to ({'; '.join(dict.fromkeys(differences))}): "
            "it was edited or copied from another run. Put the run's values back (nothing was changed), "
            "or start a new run with the new settings"
        )
    return choice


def set_aside_damaged(choice: CheckpointChoice) -> None:
    """Rename checkpoints that do not load to ``<name>.damaged``: kept for inspection, never
    resumed from, and not counted among the newest checkpoints the run keeps."""
    for path, _why in choice.skipped:
        path.rename(path.with_name(path.name + ".damaged"))


def check_run_inputs(config: TrainConfig, spec: EnvSpec, venv: VecEnv) -> Teacher | None:
    """Refuse bad input before anything is written; returns the teacher that answers in this
    process: simulated, recorded or the user's object (None: people, or a store teacher)."""
    assert config.algo is not None
    check_algorithm_fits(config.algo, venv.action_space, config.env_id)
    if config.normalize_observations:
        try:
            check_normalizable(venv.observation_space, config.env_id)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.reward_source != "preferences":
        return None
    if config.db_url:
        check_store_url(config.db_url)
    if config.teacher_name == HUMAN_TEACHER:  # people watch clips rendered in another process
        check_can_render(spec)
    if isinstance(config.teacher, StoreTeacher) or config.teacher == HUMAN_TEACHER:
        return None
    if not isinstance(config.teacher, str):  # the user's own Teacher object
        return config.teacher
    if config.teacher.startswith(RECORDED_PREFIX):
        from prefloop.teachers.recorded import make_recorded_teacher

        teacher = make_recorded_teacher(config.teacher[len(RECORDED_PREFIX):])
        check_recording_env(teacher.recorded_config, config)
        for difference in teacher.config_differences(config.to_json()):
            log.warning("replay differs from the recorded run (its pairs may not all be recorded): %s", difference)
        return teacher
    return build_simulated_teacher(config.teacher, config.teacher_params, config.seed)


def check_recording_env(recorded_config: dict | None, config: TrainConfig) -> None:
    """Refuse a recording of another env before the run folder exists: none of its pairs could
    come up, and the first round would only say that the re-run diverged."""
    recorded_env = (recorded_config or {}).get("env_id")
    if isinstance(recorded_env, str) and recorded_env != config.env_id:
        raise ConfigError(
            f"the recorded teacher's labels ({config.teacher_name}) were given on env {recorded_env!r}, "
            f"but this run is on {config.env_id!r}: none of its pairs could come up. Pass --env "
            f"{recorded_env}, or a recording made on {config.env_id}; nothing was written"
        )
