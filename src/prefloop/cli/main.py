"""``prefloop`` command line: builds configs from arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prefloop.apps.access import ENV_ADMIN_TOKEN, ENV_TOKEN
from prefloop.cli.arguments import add_password_file_argument, add_run_arguments
from prefloop.cli.bench import add_bench_parser
from prefloop.credentials import (
    ENV_DB_PASSWORD,
    ENV_DB_PASSWORD_FILE,
    CredentialsError,
    read_password_file,
    url_password,
)
from prefloop.datasets import DatasetError
from prefloop.envs import EnvSetupError
from prefloop.reward_models import RewardModelConfig, UnsupportedSpaceError
from prefloop.store import StoreError
from prefloop.teachers.base import StoreTeacher, Teacher
from prefloop.teachers.crowd import CROWD_PREFIX
from prefloop.teachers.simulated import HUMAN_TEACHER, RECORDED_PREFIX, TeacherConfigError
from prefloop.training.algos import AlgorithmError
from prefloop.training.config import ConfigError, TrainConfig
from prefloop.training.query import NotEnoughSegmentsError, QueryConfig, QueryConfigError
from prefloop.training.rundir import RunDir, RunDirError

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


# Settings for raters who answer in their own time (people in the app, a simulated teacher with
# --answer-seconds): refused where nobody would read them.
PACED_FLAGS = {"gold_fraction": "--gold-fraction", "when_behind": "--when-behind"}


def build_train_config(args: argparse.Namespace, teacher: Teacher | StoreTeacher | None = None) -> TrainConfig:
    """The run ``args`` describe; ``teacher``: the object that teaches it instead of ``--teacher``
    (``prefloop run``'s rater app)."""
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
        teacher=args.teacher if teacher is None else teacher,
        teacher_params=dict(args.teacher_param),
        labels=args.labels,
        steps=args.steps,
        algo=args.algo,
        seed=args.seed,
        n_envs=args.n_envs,
        normalize_observations=args.normalize_observations,
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
        probation_checks=args.probation_checks,
        guideline=args.guideline,
        unsupervised_steps=args.unsupervised_steps,
        reset_critic=args.reset_critic,
        background_fit=args.background_fit,
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
        # a switched-off --x/--no-x option is named as it was typed
        flags = ", ".join(("--no-" if vars(args)[key] is False else "--") + key.replace("_", "-") for key in given)
        # A run that stopped before its first label or checkpoint (impossible settings) is no dead end.
        anew = ("start it afresh with the new settings: leave out --resume (it stored no label or checkpoint, "
                "so nothing is lost)" if RunDir(Path(args.run_dir)).replaceable()
                else "start a new run (new --run-dir) with the new settings")
        raise ConfigError(
            f"--resume continues the run with its own settings (its config.json), so {flags} would be ignored: "
            f"leave them out, or {anew}"
        )


def _reward_model_config(args: argparse.Namespace) -> RewardModelConfig:
    try:
        return RewardModelConfig(n_members=args.ensemble, seed=args.seed, rater_model=args.rater_model,
                                 flag_error_rate=args.flag_error_rate, cnn=args.reward_cnn,
                                 action_squares=args.action_squares)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# What to do about a path the system refused (an output folder under a file, one we may not write...).
PATH_FIXES = {
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give the path of a file",
    errno.EEXIST: "it exists already; choose a new path",
    errno.ENOENT: "its folder does not exist; create it or choose another path",
    errno.EACCES: "you may not write or read there; choose another path or change its permissions",
    errno.EPERM: "you may not write or read there; choose another path or change its permissions",
    errno.EROFS: "that file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free some space and run the command again",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def path_problem(exc: OSError) -> str | None:
    """One line for an OSError about a file or folder the user named (None for any other OSError:
    that one keeps its traceback)."""
    fix = PATH_FIXES.get(exc.errno) if exc.errno is not None else None
    if fix is None or exc.filename is None:
        return None
    return f"cannot use {exc.filename}: {exc.strerror or type(exc).__name__}; {fix} (what is stored is kept)"


def continue_hint(args: argparse.Namespace) -> str:
    """How to continue this command's run, as a command to paste (after "every label so far is stored; ")."""
    import shlex

    run_dir = getattr(args, "run_dir", None)
    if args.command not in ("train", "run"):
        return "run the command again"
    if run_dir is None or not (Path(run_dir) / "config.json").is_file():
        return f"start it again with `prefloop {args.command} ...`"
    where = ""
    if args.command == "run":  # the app comes back where raters had it (tokens stay out: `ps` and logs show this line)
        defaults = build_parser().parse_args(["run"])
        if args.host != defaults.host:
            where += f" --host {shlex.quote(args.host)}"
        if args.port != defaults.port:
            where += f" --port {args.port}"
    hint = f"continue with `prefloop {args.command} --run-dir {shlex.quote(str(run_dir))} --resume{where}`"
    if args.command == "run" and os.environ.get("MAKELEVEL"):  # started by `make run`: prefloop may not be on PATH
        hint += f' (with make: make run PORT={args.port} ARGS="--run-dir {shlex.quote(str(run_dir))} --resume")'
    if url_password(getattr(args, "db_url", None) or ""):  # config.json keeps the URL without it
        hint += f", with the database password in ${ENV_DB_PASSWORD} or --db-password-file"
    return hint


def check_train_teacher(args: argparse.Namespace) -> None:
    """``prefloop train`` starts no rater app: a run taught by people would wait for answers forever."""
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
    with stop_signals_interrupt():
        result = train(config, resume=args.resume)
    print_run_summary(result)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train with people as the teacher: the trainer here, the rater app (and its clip worker) in a
    child process started as soon as the store exists (:class:`prefloop.apps.teacher.RaterApp`, the
    run's teacher), watched, and kept up a little after training so that open pages show the result."""
    from prefloop.apps.access import AppConfigError
    from prefloop.apps.launch import AppStartError
    from prefloop.apps.supervise import RESULT_GRACE_S
    from prefloop.apps.teacher import RaterApp, RaterAppStoppedError
    from prefloop.training.loop import train
    from prefloop.training.report import print_run_summary

    check_resume_arguments(args)
    try:  # before training starts (and before the run folder exists), not when the app fails later
        app = RaterApp(args.host, args.port, args.token, args.admin_token, keep_up_after_run=True, _cli=True)
    except (AppConfigError, AppStartError) as exc:
        raise ConfigError(str(exc)) from None
    # People are the teacher: the app is (and a resumed human run gets it back as its teacher).
    config = build_train_config(args, teacher=app if args.teacher == HUMAN_TEACHER else None)
    args.run_dir = config.run_dir  # for the "continue with" line if it stops

    def watch_with_app(run_dir: RunDir, store_url: str, run_name: str) -> None:
        # A simulated teacher's run (`prefloop run --teacher oracle`, or resuming one): the app
        # shows it beside the trainer without teaching it. A human run's app was started by train().
        if not app.started:
            app.start(store_url, run_name)

    # A timeout, systemd, `docker stop` or a closed terminal: stop like Ctrl-C, app and worker too.
    with stop_signals_interrupt() as hold_off_signals:
        try:
            result = train(config, resume=args.resume, on_ready=watch_with_app)
            print_run_summary(result)
            if app.running():
                interactive = sys.stdin.isatty()
                print("Training finished; the rater app shows raters the result and stays up "
                      + ("for its dashboard -- press Ctrl-C to stop it." if interactive else
                         f"{RESULT_GRACE_S:.0f} s more so that open pages show it."), flush=True)
                try:
                    app.wait(None if interactive else RESULT_GRACE_S)
                except KeyboardInterrupt:
                    pass  # the run is complete; Ctrl-C only stops the app
        except (KeyboardInterrupt, RaterAppStoppedError):  # the app given up on stops train() with its reason
            if app.failure is None:
                raise
            print(f"prefloop: error: {app.failure}; every label so far is stored; {continue_hint(args)}", file=sys.stderr)
            return 1
        finally:
            hold_off_signals()  # no second signal cuts the clean-up short
            app.close()
    if app.failure is not None:
        print(f"prefloop: error: {app.failure}", file=sys.stderr)
        return 1
    return 0


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C (labels kept, app stopped) but exiting 128 + signal
    number, as shells and supervisors expect (143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise StopSignal(signum)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[Callable[[], None]]:
    """While inside: SIGTERM and SIGHUP (a timeout, systemd, `docker stop`, a closed terminal)
    stop the run as Ctrl-C does (:class:`StopSignal`): its clean-up runs (the fit worker, the rater
    app stopped), every label stays stored, the exit status is 128 + the signal. Yields a function
    that ignores them from then on (a clean-up no second signal should cut short); the previous
    handlers are back on leaving."""
    stop_signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {signum: signal.signal(signum, _raise_keyboard_interrupt) for signum in stop_signals}

    def hold_off() -> None:
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)

    try:
        yield hold_off
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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

    add_bench_parser(sub)
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
    except OSError as exc:
        problem = path_problem(exc)
        if problem is None:
            raise
        logging.getLogger("prefloop").debug("where the path was refused", exc_info=True)  # with -v
        print(f"prefloop: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"prefloop: interrupted; every label so far is stored; {continue_hint(args)}", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, StopSignal) else 130
    finally:
        if previous_password_file is None:
            os.environ.pop(ENV_DB_PASSWORD_FILE, None)
        else:
            os.environ[ENV_DB_PASSWORD_FILE] = previous_password_file


if __name__ == "__main__":
    sys.exit(main())
