"""``prefloop`` command line: builds configs from arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prefloop.algos import ALGORITHMS, AlgorithmError
from prefloop.cli_raters import non_negative_number
from prefloop.config import WHEN_BEHIND, ConfigError, TrainConfig
from prefloop.dataset import DatasetError
from prefloop.envs import EnvSetupError
from prefloop.query import QUERY_METHODS, NotEnoughSegmentsError, QueryConfig, QueryConfigError
from prefloop.reward_models import RewardModelConfig, UnsupportedSpaceError
from prefloop.rundir import RunDirError
from prefloop.store import StoreError
from prefloop.reward_models.training import RATER_MODELS
from prefloop.teacher_specs import parse_teacher_spec
from prefloop.teachers import TEACHER_PRESETS, TeacherConfigError, parse_teacher_param

# Errors that are the user's input, not a bug: shown as one clear line, exit code 2.
USER_ERRORS = (
    AlgorithmError,
    ConfigError,
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
                        help="'human' (raters in the browser app), a simulated teacher ("
                        + ", ".join(sorted(TEACHER_PRESETS)) + "), recorded:DIR (replay the labels of an exported dataset or an imported run folder), "
                        "a simulated crowd crowd:[COUNTx]KIND[@EPSILON],... (e.g. crowd:3xcareful@0.05,random,adversarial), "
                        "or fitted:PATH[,rater=NAME] (a rater's model from `prefloop raters fit --json PATH`)")
    parser.add_argument(
        "--teacher-param", action="append", default=[], type=_teacher_param, metavar="KEY=VALUE",
        help="override a teacher parameter: beta, gamma, epsilon, skip_threshold, equal_threshold (repeatable)",
    )
    parser.add_argument("--labels", type=_positive_int, default=200, help="label budget of the run (default 200)")
    parser.add_argument("--steps", type=_positive_int, default=None, help="env steps (default: the env preset's)")
    parser.add_argument("--algo", default=None, choices=sorted(ALGORITHMS), help="SB3 algorithm (default: the env preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--query", default="disagreement", type=_query_spec, metavar="METHOD[+qpa][+surf]",
                        help=f"query selection: {', '.join(QUERY_METHODS)}, optionally +qpa (policy-aligned) "
                             "and/or +surf (semi-supervised) (default: disagreement)")
    parser.add_argument("--oversampling", type=_positive_int, default=10, help="candidate pairs scored per pair asked")
    parser.add_argument("--segment-length", type=_positive_int, default=None, help="steps per segment (default: the preset's)")
    parser.add_argument("--n-envs", type=_positive_int, default=None, help="parallel envs (default: the preset's)")
    parser.add_argument("--ensemble", type=_positive_int, default=3, help="reward-model ensemble members")
    parser.add_argument("--rater-model", default="reliability", choices=RATER_MODELS,
                        help="several raters: estimate each one's error rate jointly with the reward and down-weight "
                             "unreliable ones (reliability, default), or count every label alike (plain)")
    parser.add_argument("--flag-error-rate", type=float, default=0.3,
                        help="reliability: raters estimated to err at least this often are flagged and their labels "
                             "get weight 0 (kept in the store) (default 0.3)")
    parser.add_argument("--reward-source", default="preferences", choices=("preferences", "true"),
                        help="'true' trains on the env reward instead (the baseline)")
    parser.add_argument("--eval-episodes", type=_positive_int, default=10)
    parser.add_argument("--db-url", default=None, help="SQLAlchemy URL of the store (default: SQLite in the run folder)")
    parser.add_argument("--when-behind", default="pace", choices=WHEN_BEHIND,
                        help="raters behind the label schedule: 'pace' (default) trains the policy only as far as the "
                        "answers so far unlock, 'wait' pauses at every round until all pairs are answered, "
                        "'continue' never waits (a slow rater then makes the run worse, not longer)")
    parser.add_argument("--answer-seconds", type=_seconds, default=0.0, metavar="S",
                        help="a simulated teacher answers through the store at human pace: S seconds per pair "
                        "(the median), in a background thread, like a person in the app (default 0: at once)")
    parser.add_argument("--answer-seconds-sigma", type=_seconds, default=0.0, metavar="SIGMA",
                        help="spread of those times (log-normal sigma; 0 = always S)")
    parser.add_argument("--gold-fraction", type=float, default=0.05, help="human raters: share of quality-control pairs with a known answer")
    parser.add_argument("--raters-per-pair", type=_positive_int, default=1, help="labels per pair (>1 measures rater agreement)")
    parser.add_argument("--unsupervised-steps", type=int, default=None,
                        help="PEBBLE: env steps of state-entropy exploration before the first query (default: the env preset's, 0 for most)")
    parser.add_argument("--guideline", default=None, help="the question shown to raters above the clips (default: the env preset's)")


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    run_dir = args.run_dir or Path("runs") / f"{args.env}-{args.teacher}-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
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
        when_behind=args.when_behind,
        answer_seconds=args.answer_seconds,
        answer_seconds_sigma=args.answer_seconds_sigma,
        gold_fraction=args.gold_fraction,
        raters_per_pair=args.raters_per_pair,
        guideline=args.guideline,
        unsupervised_steps=args.unsupervised_steps,
    )


def _reward_model_config(args: argparse.Namespace) -> RewardModelConfig:
    try:
        return RewardModelConfig(n_members=args.ensemble, seed=args.seed, rater_model=args.rater_model,
                                 flag_error_rate=args.flag_error_rate)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_train(args: argparse.Namespace) -> int:
    from prefloop.loop import train
    from prefloop.report import print_run_summary

    if args.resume and args.run_dir is None:
        raise RunDirError("--resume needs --run-dir: the folder of the run to continue")
    config = build_train_config(args)
    result = train(config, resume=args.resume)
    print_run_summary(result)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train with people as the teacher: the trainer here, the rater app (and its clip worker) in a
    child process started as soon as the store exists, watched and stopped with the run."""
    import _thread
    import os
    import signal

    from prefloop.loop import train
    from prefloop.report import print_run_summary

    from prefloop.apps.access import ENV_ADMIN_TOKEN, ENV_TOKEN, AppConfigError, check_exposure, check_token_value
    from prefloop.apps.launch import AppStartError, check_port_free
    from prefloop.apps.supervise import RaterAppSupervisor

    if args.resume and args.run_dir is None:
        raise RunDirError("--resume needs --run-dir: the folder of the run to continue")
    try:  # before training starts (and before the run folder exists), not when the app fails later
        check_token_value(args.token, "--token")
        check_token_value(args.admin_token, "--admin-token")
        check_exposure(args.host, args.token, args.admin_token)
        check_port_free(args.host, args.port)
    except (AppConfigError, AppStartError) as exc:
        raise ConfigError(str(exc)) from None
    config = build_train_config(args)
    supervisors: list[RaterAppSupervisor] = []

    def start_app(run_dir, store_url: str, run_name: str) -> None:
        env = dict(os.environ)
        # Tokens travel in the environment, not on the command line, where `ps` shows them.
        if args.token:
            env[ENV_TOKEN] = args.token
        if args.admin_token:
            env[ENV_ADMIN_TOKEN] = args.admin_token
        # The app prints its URL itself, once, when it answers (and is this run's app).
        supervisor = RaterAppSupervisor(
            ["--db-url", store_url, "--run-name", run_name, "--host", args.host, "--port", str(args.port)],
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
        if supervisors and supervisors[0].running() and sys.stdin.isatty():
            print("Training finished; the rater app says so to raters and stays up for its dashboard "
                  "-- press Ctrl-C to stop it.", flush=True)
            try:
                supervisors[0].wait()
            except KeyboardInterrupt:
                pass  # the run is complete; Ctrl-C only stops the app
    except KeyboardInterrupt:
        failure = supervisors[0].failure if supervisors else None
        if failure is None:
            raise
        print(f"prefloop: error: {failure}; every label so far is stored, continue with --resume", file=sys.stderr)
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
    from prefloop.bench import BenchConfig, run_bench

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
    run_p.add_argument("--port", type=_positive_int, default=8501)
    run_p.add_argument("--token", default=None, help="access token raters must present (required off loopback)")
    run_p.add_argument("--admin-token", default=None,
                       help="token for the dashboard and the preferences download (required off loopback, must differ from --token)")
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
    from prefloop.cli_raters import add_raters_parser
    from prefloop.dataset import add_export_parser, add_import_parser
    from prefloop.doctor import add_doctor_parser

    add_rate_parser(sub)
    add_raters_parser(sub)
    add_doctor_parser(sub)
    add_export_parser(sub)
    add_import_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"prefloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefloop: interrupted; every label so far is stored, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
