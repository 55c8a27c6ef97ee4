"""``prefloop`` command line: builds configs from arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prefloop.apps.access import ENV_ADMIN_TOKEN, ENV_TOKEN
from prefloop.cli.raters import non_negative_number
from prefloop.credentials import (
    ENV_DB_PASSWORD,
    ENV_DB_PASSWORD_FILE,
    CredentialsError,
    read_password_file,
    url_password,
    url_without_password,
)
from prefloop.datasets import DatasetError
from prefloop.envs import EnvSetupError
from prefloop.reward_models import RewardModelConfig, UnsupportedSpaceError
from prefloop.reward_models.training import RATER_MODELS
from prefloop.store import StoreError
from prefloop.teachers.crowd import CROWD_PREFIX
from prefloop.teachers.simulated import (
    HUMAN_TEACHER,
    RECORDED_PREFIX,
    TEACHER_PRESETS,
    TeacherConfigError,
    parse_teacher_param,
)
from prefloop.teachers.specs import parse_teacher_spec
from prefloop.training.algos import ALGORITHMS, AlgorithmError, algorithm_class
from prefloop.training.config import WHEN_BEHIND, ConfigError, TrainConfig
from prefloop.training.query import (
    QUERY_METHODS,
    NotEnoughSegmentsError,
    QueryConfig,
    QueryConfigError,
)
from prefloop.training.rundir import RunDirError

# Errors that are the user's input, not a bug: shown as one clear line, exit code 2.
USER_ERRORS = (
    AlgorithmError,
    ConfigError,
    CredentialsError,
    DatasetError,
    EnvSetupError,
    NotEnoughSegmentsError,
    QueryConfigError,
    RunDirError,
    StoreError,
    TeacherConfigError,
    UnsupportedSpaceError,
)


def _teacher_param(text: str) -> tuple[str, float]:
    try:
        return parse_teacher_param(text)
    except TeacherConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _teacher_name(text: str) -> str:
    if text == "human" or text in TEACHER_PRESETS or (text.startswith("recorded:") and len(text) > len("recorded:")):
        return text
    if text.startswith(("crowd:", "fitted:")):
        return _teacher_spec(text)
    import difflib

    close = difflib.get_close_matches(text, ["human", *TEACHER_PRESETS], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown teacher {text!r}.{hint} Choose human, {', '.join(sorted(TEACHER_PRESETS))}, recorded:DATASET_DIR, "
        "crowd:MEMBERS (e.g. crowd:3xcareful@0.05,random,adversarial) or fitted:PATH,rater=NAME"
    )


def _teacher_spec(text: str) -> str:
    try:
        parse_teacher_spec(text)
    except TeacherConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _query_spec(text: str) -> str:
    try:
        return QueryConfig.from_spec(text).spec
    except QueryConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _algo(text: str) -> str:
    """An SB3 algorithm name (any case) or an algorithm class's import path (sb3_contrib:TRPO)."""
    if text.lower() in ALGORITHMS:
        return text.lower()
    try:
        algorithm_class(text)
    except AlgorithmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="CartPole-v1", help="Gymnasium env id (default: CartPole-v1)")
    parser.add_argument("--teacher", default="oracle", type=_teacher_name, metavar="TEACHER",
                        help="'human' (people in the rater app; only `prefloop run` starts it), a simulated teacher ("
                        + ", ".join(sorted(TEACHER_PRESETS)) + "), recorded:DIR (replay the labels of an exported dataset or an imported run folder), "
                        "a simulated crowd crowd:[COUNTx]KIND[@EPSILON],... (e.g. crowd:3xcareful@0.05,random,adversarial), "
                        "or fitted:PATH[,rater=NAME] (a rater's model from `prefloop raters fit --json PATH`)")
    parser.add_argument(
        "--teacher-param", action="append", default=[], type=_teacher_param, metavar="KEY=VALUE",
        help="override a teacher parameter: beta, gamma, epsilon, skip_threshold, equal_threshold (repeatable)",
    )
    parser.add_argument("--labels", type=_positive_int, default=200, help="label budget of the run (default 200)")
    parser.add_argument("--steps", type=_positive_int, default=None, help="env steps (default: the env preset's)")
    parser.add_argument("--algo", default=None, type=_algo, metavar="ALGO",
                        help=f"SB3 algorithm: {', '.join(sorted(ALGORITHMS))}, or any SB3-compatible algorithm class by "
                        "its import path, e.g. sb3_contrib:TRPO (pip install 'prefloop[contrib]') (default: the env preset's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the env, the policy and the reward model (default: 0)")
    parser.add_argument("--query", default="disagreement", type=_query_spec, metavar="METHOD[+qpa][+surf]",
                        help=f"query selection: {', '.join(QUERY_METHODS)}, optionally +qpa (policy-aligned) "
                             "and/or +surf (semi-supervised) (default: disagreement)")
    parser.add_argument("--oversampling", type=_positive_int, default=10, help="candidate pairs scored per pair asked (default: 10)")
    parser.add_argument("--segment-length", type=_positive_int, default=None, help="steps per segment (default: the preset's)")
    parser.add_argument("--n-envs", type=_positive_int, default=None, help="parallel envs (default: the preset's)")
    parser.add_argument("--ensemble", type=_positive_int, default=3, help="reward-model ensemble members (default: 3)")
    parser.add_argument("--reward-cnn", default="nature", choices=("nature", "christiano"),
                        help="image observations: the reward model's conv torso, Nature-DQN (default) or Christiano "
                             "et al.'s smaller Atari net (a quarter of the arithmetic, for CPU-only runs)")
    parser.add_argument("--rater-model", default="reliability", choices=RATER_MODELS,
                        help="several raters: estimate each one's error rate jointly with the reward and down-weight "
                             "unreliable ones (reliability, default), or count every label alike (plain)")
    parser.add_argument("--flag-error-rate", type=float, default=0.3,
                        help="reliability: raters estimated to err at least this often are flagged and their labels "
                             "get weight 0 (kept in the store) (default 0.3)")
    parser.add_argument("--reward-source", default="preferences", choices=("preferences", "true"),
                        help="'true' trains on the env reward instead (the baseline)")
    parser.add_argument("--eval-episodes", type=_positive_int, default=10,
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
    parser.add_argument("--answer-seconds", type=_seconds, default=0.0, metavar="S",
                        help="a simulated teacher answers through the store at human pace: S seconds per pair "
                        "(the median), in a background thread, like a person in the app (default 0: at once)")
    parser.add_argument("--answer-seconds-sigma", type=_seconds, default=0.0, metavar="SIGMA",
                        help="spread of those times (log-normal sigma; 0 = always S)")
    parser.add_argument("--gold-fraction", type=float, default=None,
                        help="share of quality-control pairs with a known answer (default 0.05), for raters who answer "
                        "in their own time (people, --answer-seconds) and replays of a human run")
    parser.add_argument("--raters-per-pair", type=_positive_int, default=1, help="labels per pair (>1 measures rater agreement)")
    parser.add_argument("--unsupervised-steps", type=int, default=None,
                        help="PEBBLE: env steps of state-entropy exploration before the first query (default: the env preset's, 0 for most)")
    parser.add_argument("--guideline", default=None, help="the question shown to raters above the clips (default: the env preset's)")


def add_password_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db-password-file", type=Path, default=None, metavar="FILE",
                        help=f"file holding the database password (default: ${ENV_DB_PASSWORD}, "
                        f"${ENV_DB_PASSWORD_FILE} or PostgreSQL's PGPASSWORD / ~/.pgpass)")


# Settings for raters who answer in their own time (people in the app, a simulated teacher with
# --answer-seconds): refused where nobody would read them.
PACED_FLAGS = {"gold_fraction": "--gold-fraction", "when_behind": "--when-behind"}


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    run_dir = args.run_dir or Path("runs") / f"{args.env}-{args.teacher}-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    paced = {key: getattr(args, key) for key in PACED_FLAGS if getattr(args, key) is not None}
    at_once = args.teacher != HUMAN_TEACHER and not args.answer_seconds
    # Gold pairs are asked of a simulated crowd (it stands in for people) and by a replay of a
    # human run too, so there the gold share is read.
    asks_gold = args.teacher.startswith((RECORDED_PREFIX, CROWD_PREFIX))
    ignored = [key for key in paced if at_once and not (key == "gold_fraction" and asks_gold)]
    if ignored:
        flags = " and ".join(PACED_FLAGS[key] for key in ignored)
        raise ConfigError(
            f"{flags} {'apply' if len(ignored) > 1 else 'applies'} to raters who answer in their own time (--teacher "
            f"human, or a simulated teacher with --answer-seconds); the {args.teacher!r} teacher answers every pair "
            f"as soon as it is asked: leave {flags} out"
        )
    return TrainConfig(
        env_id=args.env,
        run_dir=Path(run_dir),
        teacher=args.teacher,
        teacher_params=dict(args.teacher_param),
        labels=args.labels,
        steps=args.steps,
        algo=args.algo,
        seed=args.seed,
        n_envs=args.n_envs,
        segment_length=args.segment_length,
        reward_source=args.reward_source,
        query=QueryConfig.from_spec(args.query, oversampling=args.oversampling),
        reward_model=_reward_model_config(args),
        eval_episodes=args.eval_episodes,
        progress_bar=not args.no_progress,
        db_url=args.db_url,
        answer_seconds=args.answer_seconds,
        answer_seconds_sigma=args.answer_seconds_sigma,
        raters_per_pair=args.raters_per_pair,
        guideline=args.guideline,
        unsupervised_steps=args.unsupervised_steps,
        **paced,
    )


# What --resume takes from its command line; every other run setting comes from the run folder.
RESUME_OPTIONS = {"command", "func", "verbose", "run_dir", "resume", "no_progress", "db_url", "db_password_file",
                  "host", "port", "token", "admin_token"}


def check_resume_arguments(args: argparse.Namespace) -> None:
    """Refuse run settings given with --resume (the run keeps its own), instead of ignoring them."""
    if not args.resume:
        return
    if args.run_dir is None:
        raise RunDirError("--resume needs --run-dir: the folder of the run to continue")
    defaults = vars(build_parser().parse_args([args.command, "--run-dir", str(args.run_dir)]))
    given = sorted(key for key, value in vars(args).items() if key not in RESUME_OPTIONS and value != defaults.get(key))
    if given:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise ConfigError(
            f"--resume continues the run with its own settings (its config.json), so {flags} would be ignored: "
            "leave them out, or start a new run (new --run-dir) with the new settings"
        )


def _reward_model_config(args: argparse.Namespace) -> RewardModelConfig:
    try:
        return RewardModelConfig(n_members=args.ensemble, seed=args.seed, rater_model=args.rater_model,
                                 flag_error_rate=args.flag_error_rate, cnn=args.reward_cnn)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def continue_hint(args: argparse.Namespace) -> str:
    """How to continue this command's run, as a command to paste (after "every label so far is stored; ")."""
    import shlex

    run_dir = getattr(args, "run_dir", None)
    if args.command not in ("train", "run"):
        return "run the command again"
    if run_dir is None or not (Path(run_dir) / "config.json").is_file():
        return f"start it again with `prefloop {args.command} ...`"
    return f"continue with `prefloop {args.command} --run-dir {shlex.quote(str(run_dir))} --resume`"


def check_train_teacher(args: argparse.Namespace) -> None:
    """``prefloop train`` starts no rater app: a run taught by people would wait for answers forever."""
    from prefloop.training.rundir import RunDir

    teacher = RunDir(args.run_dir).load_config().teacher if args.resume else args.teacher
    if teacher != "human":
        return
    import shlex

    if args.resume:
        raise ConfigError(
            f"{args.run_dir} is a run taught by people (teacher human) and `prefloop train` starts no rater app: "
            f"continue it with `prefloop run --run-dir {shlex.quote(str(args.run_dir))} --resume` (the trainer plus the rater app)"
        )
    raise ConfigError("`prefloop train` starts no rater app, so --teacher human would wait for answers forever: "
                      "use `prefloop run` (the trainer plus the rater app), or a simulated teacher")


def cmd_train(args: argparse.Namespace) -> int:
    from prefloop.training.loop import train
    from prefloop.training.report import print_run_summary

    check_resume_arguments(args)
    config = build_train_config(args)  # bad settings are named first, whatever the teacher
    check_train_teacher(args)
    args.run_dir = config.run_dir  # for the "continue with" line if it stops
    result = train(config, resume=args.resume)
    print_run_summary(result)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train with people as the teacher: the trainer here, the rater app (and its clip worker) in a
    child process started as soon as the store exists, watched and stopped with the run."""
    import _thread
    import os
    import signal

    from prefloop.apps.access import AppConfigError, check_exposure, check_token_value
    from prefloop.apps.launch import AppStartError, check_port_free
    from prefloop.apps.supervise import RESULT_GRACE_S, RaterAppSupervisor
    from prefloop.training.loop import train
    from prefloop.training.report import print_run_summary

    check_resume_arguments(args)
    try:  # before training starts (and before the run folder exists), not when the app fails later
        check_token_value(args.token, "--token")
        check_token_value(args.admin_token, "--admin-token")
        check_exposure(args.host, args.token, args.admin_token)
        check_port_free(args.host, args.port)
    except (AppConfigError, AppStartError) as exc:
        raise ConfigError(str(exc)) from None
    config = build_train_config(args)
    args.run_dir = config.run_dir  # for the "continue with" line if it stops
    supervisors: list[RaterAppSupervisor] = []

    def start_app(run_dir, store_url: str, run_name: str) -> None:
        env = dict(os.environ)
        # Secrets travel in the environment, not on the command line, where `ps` shows them.
        if url_password(store_url):
            env[ENV_DB_PASSWORD] = url_password(store_url) or ""
        if args.token:
            env[ENV_TOKEN] = args.token
        if args.admin_token:
            env[ENV_ADMIN_TOKEN] = args.admin_token
        # The app prints its URL itself, once, when it answers (and is this run's app).
        supervisor = RaterAppSupervisor(
            ["--db-url", url_without_password(store_url), "--run-name", run_name, "--host", args.host, "--port", str(args.port)],
            env, on_give_up=lambda why: _thread.interrupt_main(),
        )
        supervisors.append(supervisor)
        supervisor.start()

    # A timeout, systemd, `docker stop` or a closed terminal: stop like Ctrl-C, app and worker too.
    stop_signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {signum: signal.signal(signum, _raise_keyboard_interrupt) for signum in stop_signals}
    try:
        result = train(config, resume=args.resume, on_ready=start_app)
        print_run_summary(result)
        if supervisors and supervisors[0].running():
            interactive = sys.stdin.isatty()
            print("Training finished; the rater app shows raters the result and stays up "
                  + ("for its dashboard -- press Ctrl-C to stop it." if interactive else
                     f"{RESULT_GRACE_S:.0f} s more so that open pages show it."), flush=True)
            try:
                supervisors[0].wait(None if interactive else RESULT_GRACE_S)
            except KeyboardInterrupt:
                pass  # the run is complete; Ctrl-C only stops the app
    except KeyboardInterrupt:
        failure = supervisors[0].failure if supervisors else None
        if failure is None:
            raise
        print(f"prefloop: error: {failure}; every label so far is stored; {continue_hint(args)}", file=sys.stderr)
        return 1
    finally:
        for signum in previous:  # no second signal cuts the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        for supervisor in supervisors:
            supervisor.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failure = supervisors[0].failure if supervisors else None
    if failure is not None:
        print(f"prefloop: error: {failure}", file=sys.stderr)
        return 1
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_bench(args: argparse.Namespace) -> int:
    from prefloop.bench.sweep import BenchConfig, run_bench

    config = BenchConfig(
        envs=tuple(args.envs),
        label_budgets=tuple(args.labels),
        seeds=tuple(args.seeds),
        teachers=tuple(args.teachers),
        queries=tuple(args.queries),
        rater_models=tuple(args.rater_models),
        algos=tuple(args.algos) if args.algos else (None,),
        steps=args.steps,
        out_dir=Path(args.out),
        workers=args.workers,
        eval_episodes=args.eval_episodes,
        executor="ray" if (args.ray or args.ray_address) else "process",
        ray_address=args.ray_address,
        resume=args.resume,
        reuse_from=tuple(Path(p) for p in args.reuse),
        answer_seconds=args.answer_seconds,
        answer_seconds_sigma=args.answer_seconds_sigma,
        hourly_rate=args.hourly_rate,
        cost_per_label=args.cost_per_label,
        currency=args.currency,
    )
    run_bench(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefloop", description="Reinforcement learning from human preferences.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train_p = sub.add_parser("train", help="train a policy from simulated-teacher preferences")
    add_run_arguments(train_p)
    train_p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: runs/<env>-<teacher>-s<seed>-<time>)")
    train_p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    train_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    train_p.set_defaults(func=cmd_train)

    run_p = sub.add_parser("run", help="train from human preferences: the trainer plus the rater app")
    add_run_arguments(run_p)
    run_p.set_defaults(teacher="human")
    run_p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: runs/<env>-human-s<seed>-<time>)")
    run_p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    run_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_p.add_argument("--host", default="127.0.0.1", help="address the rater app listens on (anything but loopback needs --token and --admin-token)")
    from prefloop.apps.launch import port_number

    run_p.add_argument("--port", type=port_number, default=8501, help="port of the rater app, 1-65535 (default: 8501)")
    run_p.add_argument("--token", default=os.environ.get(ENV_TOKEN),
                       help=f"access token raters must present (required off loopback; default: ${ENV_TOKEN})")
    run_p.add_argument("--admin-token", default=os.environ.get(ENV_ADMIN_TOKEN),
                       help="token for the dashboard and the preferences download (required off loopback, must differ "
                       f"from --token; default: ${ENV_ADMIN_TOKEN})")
    run_p.set_defaults(func=cmd_run)

    _add_optional_commands(sub)

    bench_p = sub.add_parser("bench", help="preference runs vs. true-reward and random baselines, over a grid")
    bench_p.add_argument("--envs", nargs="+", default=["CartPole-v1"], help="Gymnasium env ids (default: CartPole-v1)")
    bench_p.add_argument("--labels", nargs="+", type=_positive_int, default=[200], help="label budgets (default: 200)")
    bench_p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    bench_p.add_argument("--teachers", nargs="+", default=["oracle"], type=_teacher_spec, metavar="TEACHER[:KEY=VALUE,...]",
                         help=f"simulated teachers: B-Pref's presets ({', '.join(sorted(TEACHER_PRESETS))}), optionally "
                              "with parameters, e.g. mistake:epsilon=0.2; crowds, e.g. crowd:3xcareful@0.05,random,adversarial; "
                              "fitted:PATH,rater=NAME (default: oracle)")
    bench_p.add_argument("--queries", nargs="+", default=["disagreement"], type=_query_spec, metavar="METHOD[+qpa][+surf]",
                         help=f"query selection methods: {', '.join(QUERY_METHODS)}, each optionally +qpa and/or +surf "
                              "(default: disagreement)")
    bench_p.add_argument("--rater-models", nargs="+", default=["reliability"], choices=RATER_MODELS,
                         help="losses compared: per-rater reliability and/or the plain loss (default: reliability)")
    bench_p.add_argument("--algos", nargs="+", default=None, choices=sorted(ALGORITHMS),
                         help="SB3 algorithms (default: each env preset's)")
    bench_p.add_argument("--steps", type=_positive_int, default=None, help="env steps per run (default: each preset's)")
    bench_p.add_argument("--workers", type=_positive_int, default=None, help="parallel runs (default: CPU cores)")
    bench_p.add_argument("--eval-episodes", type=_positive_int, default=10, help="evaluation episodes per run (default: 10)")
    bench_p.add_argument("--resume", action="store_true",
                         help="finish an interrupted sweep in --out: keep its finished runs, run the rest")
    bench_p.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="DIR",
                         help="take runs with an identical config (e.g. true-reward baselines) from these earlier sweep folders")
    bench_p.add_argument("--answer-seconds", type=_seconds, default=0.0, metavar="S",
                         help="teachers answer through the store at human pace, S seconds per pair (runs are then "
                              "paced by them; more --workers than cores is fine, they mostly wait)")
    bench_p.add_argument("--answer-seconds-sigma", type=_seconds, default=0.0, metavar="SIGMA",
                         help="log-normal spread of those times (default 0: always S)")
    price = bench_p.add_mutually_exclusive_group()
    price.add_argument("--hourly-rate", type=non_negative_number, default=None, metavar="RATE",
                       help="what a rater is paid per hour: results add cost and true return gained per human hour "
                            "and per unit of cost (with a plot); human hours come from --answer-seconds")
    price.add_argument("--cost-per-label", type=non_negative_number, default=None, metavar="PRICE", help="or: what one label costs")
    bench_p.add_argument("--currency", default="USD", help="currency shown beside costs (default: USD)")
    bench_p.add_argument("--out", default="bench-out/latest", help="output folder")
    bench_p.add_argument("--ray", action="store_true", help="run on a local Ray instance instead of a process pool")
    bench_p.add_argument("--ray-address", default=None, help="run on the Ray cluster at this address (e.g. ray://head:10001)")
    bench_p.set_defaults(func=cmd_bench)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction) -> None:
    """Commands whose modules live with their part of the product (the app, the doctor)."""
    from prefloop.apps.cli_rate import add_rate_parser
    from prefloop.cli.datasets import add_export_parser, add_import_parser
    from prefloop.cli.raters import add_raters_parser
    from prefloop.ops.doctor import add_doctor_parser

    for parser in (add_rate_parser(sub), add_doctor_parser(sub), add_export_parser(sub), add_import_parser(sub)):
        add_password_file_argument(parser)
    add_raters_parser(sub)


def refuse_unknown_arguments(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """Exit (code 2) with the command's own usage, not the top-level one, and the flag a typo
    was probably meant to be (``--lables`` -> ``--labels``)."""
    import difflib

    sub = parser._subparsers._group_actions[0].choices.get(command, parser)  # type: ignore[union-attr]
    flags = [option for action in sub._actions for option in action.option_strings]
    hint = ""
    for word in unknown:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1)
            if close:
                hint = f"; did you mean {close[0]}?"
                break
    sub.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


class CurrentStderrHandler(logging.StreamHandler):
    """Log lines to whatever ``sys.stderr`` is when they are written, not when logging was set up:
    while the progress bar is shown, rich redirects stderr so that each line prints on its own line
    above the bar instead of glued onto it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - a text stream
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler sets it; the current stderr wins
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        refuse_unknown_arguments(parser, args.command, unknown)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S", handlers=[CurrentStderrHandler()])
    previous_password_file = os.environ.get(ENV_DB_PASSWORD_FILE)
    try:
        if getattr(args, "db_password_file", None) is not None:
            read_password_file(args.db_password_file)  # unreadable or empty: one line, before anything runs
            # The store reads it from there (this process and its children): the path travels, not the password.
            os.environ[ENV_DB_PASSWORD_FILE] = str(Path(args.db_password_file).resolve())
        if url_password(getattr(args, "db_url", None) or ""):
            logging.getLogger("prefloop").warning(
                "the password in --db-url is visible to other users of this machine (ps) while this runs; it is "
                "never saved. Prefer $%s or --db-password-file", ENV_DB_PASSWORD)
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"prefloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prefloop: interrupted; every label so far is stored; {continue_hint(args)}", file=sys.stderr)
        return 130
    finally:
        if previous_password_file is None:
            os.environ.pop(ENV_DB_PASSWORD_FILE, None)
        else:
            os.environ[ENV_DB_PASSWORD_FILE] = previous_password_file


if __name__ == "__main__":
    sys.exit(main())
