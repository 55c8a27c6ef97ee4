"""The arguments ``prefloop train`` and ``prefloop run`` share, and the argument types that check a
value as it is parsed (an unknown teacher or query method is refused with the usage line, and a
close match suggested)."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefloop.credentials import ENV_DB_PASSWORD, ENV_DB_PASSWORD_FILE
from prefloop.envs.pixels import ATARI_ID, PIXEL_CARTPOLE_ID
from prefloop.reward_models.config import RATER_MODELS
from prefloop.teachers.simulated import TEACHER_PRESETS, TeacherConfigError, parse_teacher_param
from prefloop.teachers.specs import parse_teacher_spec
from prefloop.training.algos import ALGORITHMS, AlgorithmError, algorithm_class
from prefloop.training.config import WHEN_BEHIND
from prefloop.training.query import DEFAULT_QUERY, QUERY_METHODS, QueryConfig, QueryConfigError


def teacher_param(text: str) -> tuple[str, float]:
    try:
        return parse_teacher_param(text)
    except TeacherConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def teacher_name(text: str) -> str:
    if text == "human" or text in TEACHER_PRESETS or (text.startswith("recorded:") and len(text) > len("recorded:")):
        return text
    if text.startswith(("crowd:", "fitted:")):
        return teacher_spec(text)
    import difflib

    close = difflib.get_close_matches(text, ["human", *TEACHER_PRESETS], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown teacher {text!r}.{hint} Choose human, {', '.join(sorted(TEACHER_PRESETS))}, recorded:DATASET_DIR, "
        "crowd:MEMBERS (e.g. crowd:3xcareful@0.05,random,adversarial) or fitted:PATH,rater=NAME"
    )


def teacher_spec(text: str) -> str:
    try:
        parse_teacher_spec(text)
    except TeacherConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def query_spec(text: str) -> str:
    try:
        return QueryConfig.from_spec(text).spec
    except QueryConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def algo(text: str) -> str:
    """An SB3 algorithm name (any case) or an algorithm class's import path (sb3_contrib:TRPO)."""
    if text.lower() in ALGORITHMS:
        return text.lower()
    try:
        algorithm_class(text)
    except AlgorithmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def int_between(low: int, high: int):
    """An argparse type: an integer from ``low`` to ``high`` (the error names the flag, in one line)."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return value

    parse.__name__ = f"integer from {low} to {high}"
    return parse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env", default="CartPole-v1",
        help=f"Gymnasium env id, or a pixel preset: {PIXEL_CARTPOLE_ID} (CartPole from its rendering), "
             f"{ATARI_ID} (Breakout), an ALE game such as ALE/Pong-v5 (the same preprocessing; pip install "
             "'prefloop[atari]'), DeepMind Control walker_walk or cheetah_run "
             "(or dm_control/<domain>-<task>-v0; pip install 'prefloop[dmc]') (default: CartPole-v1)")
    parser.add_argument("--teacher", default="oracle", type=teacher_name, metavar="TEACHER",
                        help="'human' (people in the rater app; only `prefloop run` starts it), a simulated teacher ("
                        + ", ".join(sorted(TEACHER_PRESETS)) + "), recorded:DIR (replay the labels of an exported dataset or an imported run folder), "
                        "a simulated crowd crowd:[COUNTx]KIND[@EPSILON],... (e.g. crowd:3xcareful@0.05,random,adversarial), "
                        "or fitted:PATH[,rater=NAME] (a rater's model from `prefloop raters fit --json PATH`)")
    parser.add_argument(
        "--teacher-param", action="append", default=[], type=teacher_param, metavar="KEY=VALUE",
        help="override a teacher parameter: beta, gamma, epsilon, skip_threshold, equal_threshold (repeatable)",
    )
    parser.add_argument("--labels", type=positive_int, default=200, help="label budget of the run (default 200)")
    parser.add_argument("--steps", type=positive_int, default=None, help="env steps (default: the env preset's)")
    parser.add_argument("--algo", default=None, type=algo, metavar="ALGO",
                        help=f"SB3 algorithm: {', '.join(sorted(ALGORITHMS))}, or any SB3-compatible algorithm class by "
                        "its import path, e.g. sb3_contrib:TRPO (pip install 'prefloop[contrib]') (default: the env preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the env, the policy and the reward model (default: 0)")
    parser.add_argument("--query", default=DEFAULT_QUERY, type=query_spec, metavar="METHOD[+qpa][+surf][+cover][+ends]",
                        help=f"query selection: {', '.join(QUERY_METHODS)}, optionally +qpa (policy-aligned), "
                             f"+surf (semi-supervised), +cover (k-center coverage for the first round) and/or +ends "
                             f"(half of each round: a segment that ends its episode against one that goes on) (default: {DEFAULT_QUERY})")
    parser.add_argument("--oversampling", type=positive_int, default=10, help="candidate pairs scored per pair asked (default: 10)")
    parser.add_argument("--segment-length", type=positive_int, default=None, help="steps per segment (default: the preset's)")
    parser.add_argument("--n-envs", type=positive_int, default=None, help="parallel envs (default: the preset's)")
    parser.add_argument("--normalize-observations", action=argparse.BooleanOptionalAction, default=None,
                        help="the policy sees observations standardised by running mean and variance (SB3's VecNormalize; "
                             "the reward model and clips keep the env's own), as rl-baselines3-zoo does for PPO on MuJoCo "
                             "(default: the preset's for the algorithm, else off)")
    parser.add_argument("--ensemble", type=positive_int, default=3, help="reward-model ensemble members (default: 3)")
    parser.add_argument("--reward-cnn", default="nature", choices=("nature", "christiano"),
                        help="image observations: the reward model's conv torso, Nature-DQN (default) or Christiano "
                             "et al.'s smaller Atari net (a quarter of the arithmetic, for CPU-only runs)")
    parser.add_argument("--action-squares", action=argparse.BooleanOptionalAction, default=None,
                        help="continuous actions also enter the reward model squared, so a control cost sum(a^2) is "
                             "linear in its inputs (default: on for envs without a preset, off in the presets)")
    parser.add_argument("--rater-model", default="reliability", choices=RATER_MODELS,
                        help="several raters: estimate each one's error rate jointly with the reward and down-weight "
                             "unreliable ones (reliability, default), or count every label alike (plain)")
    parser.add_argument("--flag-error-rate", type=float, default=0.3,
                        help="reliability: raters estimated to err at least this often are flagged and their labels "
                             "get weight 0 (kept in the store) (default 0.3)")
    parser.add_argument("--reward-source", default="preferences", choices=("preferences", "true"),
                        help="'true' trains on the env reward instead (the baseline)")
    parser.add_argument("--eval-episodes", type=positive_int, default=10,
                        help="episodes of the final evaluation on the true reward (default: 10)")
    parser.add_argument("--db-url", default=None,
                        help="SQLAlchemy URL of the store (default: SQLite in the run folder); keep the password out "
                        f"of it: ${ENV_DB_PASSWORD} or --db-password-file (it is never saved)")
    add_password_file_argument(parser)
    parser.add_argument("--when-behind", default=None, choices=WHEN_BEHIND,
                        help="raters behind the label schedule: 'pace' (default) trains the policy only as far as the "
                        "answers so far unlock, 'wait' pauses at every round until all pairs are answered, "
                        "'continue' never waits (a slow rater then makes the run worse, not longer); for raters who "
                        "answer in their own time: people, or a simulated teacher with --answer-seconds")
    parser.add_argument("--answer-seconds", type=seconds, default=0.0, metavar="S",
                        help="a simulated teacher answers through the store at human pace: S seconds per pair "
                        "(the median), in a background thread, like a person in the app (default 0: at once)")
    parser.add_argument("--answer-seconds-sigma", type=seconds, default=0.0, metavar="SIGMA",
                        help="spread of those times (log-normal sigma; 0 = always S)")
    parser.add_argument("--gold-fraction", type=float, default=None,
                        help="share of quality-control pairs with a known answer (default 0.05), for raters who answer "
                        "in their own time (people, --answer-seconds) and replays of a human run")
    parser.add_argument("--raters-per-pair", type=positive_int, default=1, help="labels per pair (>1 measures rater agreement)")
    parser.add_argument("--probation-checks", type=int_between(0, 50), default=5, metavar="N",
                        help="several raters, reliability: each rater's first N answers are checks on gold pairs (they "
                        "measure the rater and are not labels), and a flagged rater gets checks only; 0 turns both off (default 5)")
    parser.add_argument("--unsupervised-steps", type=int, default=None,
                        help="PEBBLE: env steps of state-entropy exploration before the first query (default: the env preset's, 0 for most)")
    parser.add_argument("--reset-critic", action=argparse.BooleanOptionalAction, default=False,
                        help="PEBBLE: an off-policy learner (SAC, TD3, DDPG) starts the learned reward with a fresh critic "
                             "after the unsupervised steps (default: off)")
    parser.add_argument("--background-fit", action=argparse.BooleanOptionalAction, default=None,
                        help="PPO/A2C: fit the reward model in a second process while the policy collects its next "
                             "rollout; no wait for the fit where a core is free, and the same results where rollouts are "
                             "2,048 steps or more (shorter ones take a warm fit back 2,048 steps on) (default: on for runs "
                             "of 20,000 steps or more with rollouts of 2,048 steps or more, or with a simulated teacher)")
    parser.add_argument("--guideline", default=None, help="the question shown to raters above the clips (default: the env preset's)")


def add_password_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db-password-file", type=Path, default=None, metavar="FILE",
                        help=f"file holding the database password (default: ${ENV_DB_PASSWORD}, "
                        f"${ENV_DB_PASSWORD_FILE} or PostgreSQL's PGPASSWORD / ~/.pgpass)")
