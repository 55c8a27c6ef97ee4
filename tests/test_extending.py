"""The seams of docs/extending.md: every example on the page is the file in docs/examples/ and runs
end to end; the protocols hold for prefloop's own teachers; user objects are named in config.json
and a run that holds one is resumed only with the object given again."""

from __future__ import annotations

import dataclasses
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prefloop.envs import EnvSetupError, EnvSpec, check_can_render
from prefloop.envs.render import SegmentRenderer

from prefloop.config_files import ConfigError
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.teachers.base import StoreTeacher, Teacher
from prefloop.teachers.clock import ClockRater
from prefloop.teachers.crowd import make_crowd_teacher
from prefloop.teachers.simulated import make_teacher
from prefloop.training.config import TrainConfig
from prefloop.training.query import (
    MethodRule,
    QueryConfig,
    QueryConfigError,
    query_rule,
)
from prefloop.types import Choice

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
EXAMPLES = ROOT / "docs" / "examples"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def test_the_page_shows_exactly_the_tested_examples() -> None:
    blocks = python_blocks(DOC.read_text())
    files = {path.name: path.read_text() for path in sorted(EXAMPLES.glob("*.py"))}
    assert len(files) == 6
    assert sorted(blocks) == sorted(files.values()), "docs/extending.md and docs/examples/ differ: copy the files in"
    for name in files:
        assert f"(examples/{name})" in DOC.read_text(), f"{name} is not linked from the page"


def run_example(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[dict[str, Any], str]:
    """Run docs/examples/<name> as a script in ``tmp_path``; its globals and what it printed."""
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return namespace, capsys.readouterr().out


def stored(run_dir: Path, run_name: str) -> PreferenceStore:
    return PreferenceStore(sqlite_url(run_dir / "prefs.sqlite"), run_name=run_name)


def prefloop_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefloop.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_custom_teacher_answers_every_pair_and_a_resume_needs_the_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from prefloop.teachers.fitted import (
        answers_from_store,
        fit_rater,
        fits_document,
        make_fitted_teacher,
    )
    from prefloop.teachers.recorded import make_recorded_teacher
    from prefloop.training.loop import train

    ns, out = run_example("custom_teacher.py", tmp_path, monkeypatch, capsys)
    config, teacher = ns["config"], ns["teacher"]
    assert "config.json teacher: object:__main__:UprightTeacher" in out
    with stored(config.run_dir, config.run_dir.name) as store:
        labels = store.labels()
        assert len(labels) == 30 and {label.rater_id for label in labels} == {"upright"}
        for label in labels:  # every stored answer is the teacher's own
            pair = store.get_pair(label.pair_id)
            assert teacher.compare(pair.left, pair.right) == label.choice
        answers = answers_from_store(store)

    # Every teacher prefloop ships satisfies the same protocol as the user's.
    fit_path = tmp_path / "fit.json"
    fit_path.write_text(json.dumps(fits_document([fit_rater(answers[0], bootstrap=0)], "test")))
    shipped = [
        make_teacher("oracle"), make_crowd_teacher("crowd:2xcareful,random"), make_fitted_teacher(f"fitted:{fit_path}"),
        make_recorded_teacher(config.run_dir), ClockRater(make_teacher("mistake"), 1.0),
    ]
    assert all(isinstance(t, Teacher) for t in shipped)

    # Pretend the run was interrupted before its summary: the CLI cannot rebuild the object ...
    (config.run_dir / "summary.json").unlink()
    refused = prefloop_cli("train", "--resume", "--run-dir", str(config.run_dir), "--no-progress")
    assert refused.returncode != 0
    assert "teacher was a Python object (__main__:UprightTeacher)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (config.run_dir / "summary.json").exists()
    # ... Python, given the object again, resumes it.
    result = train(dataclasses.replace(TrainConfig.load(config.run_dir / "config.json"), teacher=teacher), resume=True)
    assert result.labels_used == 30 and (config.run_dir / "summary.json").exists()


@pytest.mark.slow
def test_a_store_teacher_answers_through_the_store_and_is_stopped_with_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    ns, out = run_example("store_teacher.py", tmp_path, monkeypatch, capsys)
    config, queue, result = ns["config"], ns["queue"], ns["result"]
    assert "config.json teacher: object:__main__:LabellingQueue" in out
    assert not queue._thread.is_alive(), "the run stops its store teacher"
    queue.check_alive()
    with stored(config.run_dir, config.run_dir.name) as store:
        labels = store.labels()
        assert {label.rater_id for label in labels} == {"labeller-1"}
        for label in labels:  # every stored answer is the queue's own rule
            pair = store.get_pair(label.pair_id)
            lean = ns["lean"]
            assert label.choice == (Choice.LEFT if lean(pair.left) < lean(pair.right) else Choice.RIGHT)
    assert result.labels_used == len(labels) == queue.answered == 20  # paced: every asked pair answered


def test_the_rater_app_and_the_clock_rater_are_store_teachers_and_the_app_is_recorded_as_human(tmp_path: Path) -> None:
    from conftest import free_port
    from prefloop.apps.teacher import RaterApp

    app = RaterApp(port=free_port())
    assert isinstance(app, StoreTeacher) and not isinstance(app, Teacher)
    assert isinstance(ClockRater(make_teacher("mistake"), 1.0), StoreTeacher)
    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=app)
    assert config.to_json()["teacher"] == config.teacher_name == "human"  # as `prefloop run` always wrote
    reread = TrainConfig.from_json(config.to_json())
    assert reread.teacher == "human"
    reread.check_objects()
    assert reread.with_objects_of(config).teacher is app  # a resumed human run gets its app back
    assert TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher="human", raters_per_pair=3).raters_per_pair == 3
    assert TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=app, raters_per_pair=3).raters_per_pair == 3
    with pytest.raises(ConfigError, match="answer_seconds must be 0 unless the teacher is simulated"):
        TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=app, answer_seconds=2.0)
    app.stop()  # never started: nothing to stop, no error
    app.close()


class _Bridge:
    def start(self, store_url: str, run_name: str) -> None: ...

    def stop(self) -> None: ...


class _SimulatedInDisguise(_Bridge):
    recorded_as = "oracle"


def test_a_store_teacher_is_recorded_by_its_class_and_only_people_may_record_as_human(tmp_path: Path) -> None:
    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=_Bridge())
    assert config.to_json()["teacher"] == f"object:{__name__}:_Bridge"
    reread = TrainConfig.from_json(config.to_json())
    with pytest.raises(ConfigError, match=r"teacher was a Python object .*_Bridge\) that prefloop cannot rebuild"):
        reread.check_objects()
    assert reread.with_objects_of(config).teacher is config.teacher
    with pytest.raises(ConfigError, match=r"teacher.recorded_as must be 'human' \(people answer\) or absent"):
        TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=_SimulatedInDisguise())


@pytest.mark.slow
def test_custom_query_rule_picks_every_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from prefloop.training import query

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a named method was used instead of the user's rule")

    monkeypatch.setattr(query, "select_pairs", never)
    ns, out = run_example("custom_query_rule.py", tmp_path, monkeypatch, capsys)
    assert "config.json query method: __main__:far_apart" in out
    assert ns["result"].labels_used == 30


@pytest.mark.slow
def test_custom_reward_net_trains_saves_and_loads_with_its_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from prefloop.reward_models import load_reward_metadata, load_reward_model

    ns, out = run_example("custom_reward_net.py", tmp_path, monkeypatch, capsys)
    assert "members: GatedReward" in out
    model, checkpoint = ns["model"], ns["checkpoint"]
    assert len(model.members) == 3 and len(list(model.weights)) == 0
    assert load_reward_metadata(checkpoint / "reward_model")["member_factory"] == "__main__:GatedReward"
    # trained: the members are no longer their seeded initialisation, and they differ from each other
    rewards = model(*model._tensors(np.zeros((4, 4), dtype=np.float32), np.array([0, 1, 0, 1])))
    assert rewards.shape == (3, 4) and not np.allclose(rewards[0].detach(), rewards[1].detach())
    with pytest.raises(ValueError, match=r"member_factory __main__:GatedReward was defined in a script") as caught:
        load_reward_model(checkpoint / "reward_model")
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_unregistered_env_from_a_factory_trains_and_renders_its_clips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    ns, out = run_example("custom_env.py", tmp_path, monkeypatch, capsys)
    assert "noisy cartpole obs: (4,)" in out
    config = ns["config"]
    assert json.loads((config.run_dir / "config.json").read_text())["env_factory"] == "__main__:make_corridor"
    assert ns["result"].labels_used == 30
    with stored(config.run_dir, config.run_dir.name) as store:
        segment = store.get_pair(store.labels()[0].pair_id).left
        assert json.loads(store.get_meta("env_spec"))["factory"] == "__main__:make_corridor"
    # Clips replay the recorded segment in the same factory's env (verify: same observations).
    with SegmentRenderer(EnvSpec("Corridor", factory=ns["make_corridor"])) as renderer:
        frames = renderer.render(segment, verify=True)
    assert frames.shape[1:] == (64, 64, 3) and len(frames) >= segment.length and frames.dtype == np.uint8
    # People's clips are rendered in another process, which cannot import a script's factory.
    with pytest.raises(EnvSetupError, match="must import the env factory __main__:make_corridor"):
        check_can_render(EnvSpec("Corridor", factory="__main__:make_corridor"))


@pytest.mark.slow
def test_sb3_contrib_algorithm_trains_and_its_checkpoint_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from sb3_contrib import TRPO

    ns, out = run_example("contrib_algorithm.py", tmp_path, monkeypatch, capsys)
    assert "config.json algo: sb3_contrib.trpo.trpo:TRPO" in out
    config = ns["config"]
    policy = sorted((config.run_dir / "checkpoints").glob("step-*"))[-1] / "policy.zip"
    assert TRPO.load(policy, device="cpu").policy.net_arch == [32, 32]
    assert "TRPO" in (config.run_dir / "summary.json").read_text() or ns["result"].labels_used == 30


@pytest.mark.slow
def test_cli_trains_an_sb3_contrib_algorithm_by_its_import_path(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = prefloop_cli("train", "--env", "CartPole-v1", "--algo", "sb3_contrib:QRDQN", "--steps", "2000", "--labels", "10",
                        "--run-dir", str(run), "--no-progress", "--eval-episodes", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["algo"] == "sb3_contrib:QRDQN"
    assert json.loads((run / "summary.json").read_text())["labels_used"] == 10


def test_a_missing_package_of_an_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefloop.import_paths import ImportPathError, load

    monkeypatch.setitem(sys.modules, "sbx", None)  # as if not installed (None makes the import fail)
    with pytest.raises(ImportPathError, match=r"the algorithm sbx:SAC does not import: .*; pip install 'prefloop\[sbx\]' or fix"):
        load("sbx:SAC", "algorithm")
    monkeypatch.setitem(sys.modules, "not_a_prefloop_extra", None)
    with pytest.raises(ImportPathError, match="install its package or fix the path"):
        load("not_a_prefloop_extra:Algo", "algorithm")


def test_cli_refuses_an_algorithm_path_that_does_not_import() -> None:
    done = prefloop_cli("train", "--algo", "sb3_contrib:NoSuchAlgo", "--steps", "100")
    assert done.returncode == 2 and "module sb3_contrib has no NoSuchAlgo" in done.stderr
    done = prefloop_cli("train", "--algo", "math:pi", "--steps", "100")
    assert done.returncode == 2 and "is not a stable-baselines3 algorithm class" in done.stderr


class _Answers:
    rater_id = "me"

    def compare(self, left: object, right: object) -> Choice:
        return Choice.LEFT


def test_teacher_objects_are_checked_and_named_in_config_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher must be a teacher name such as 'oracle' or an object with rater_id and compare"):
        TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=object())  # type: ignore[arg-type]
    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=_Answers())
    data = config.to_json()
    assert data["teacher"] == f"object:{__name__}:_Answers"
    json.dumps(data)  # JSON all the way down
    with pytest.raises(ConfigError, match="leave --teacher-param out"):
        TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=_Answers(), teacher_params={"beta": 1.0})
    reread = TrainConfig.from_json(data)
    with pytest.raises(ConfigError, match=r"teacher was a Python object .*_Answers\) that prefloop cannot rebuild"):
        reread.check_objects()
    assert reread.with_objects_of(config).teacher is config.teacher
    reread.with_objects_of(config).check_objects()
    other = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher=make_teacher("oracle"))
    assert isinstance(reread.with_objects_of(other).teacher, str), "an object of another class is not put back"


def far_apart_everywhere(candidates, n_pairs, rng, preference_probs):
    return MethodRule(QueryConfig(method="uniform"))(candidates, n_pairs, rng, preference_probs)


def test_named_methods_and_user_rules_take_one_path(tmp_path: Path) -> None:
    assert isinstance(query_rule(QueryConfig(method="kcenter")), MethodRule)
    assert query_rule(QueryConfig(method=far_apart_everywhere)) is far_apart_everywhere
    # A module-level function is written by its import path and imported again on resume.
    config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, query=QueryConfig(method=far_apart_everywhere))
    path = config.to_json()["query"]["method"]
    assert path == f"{__name__}:far_apart_everywhere"
    reread = TrainConfig.from_json(config.to_json())
    reread.check_objects()
    assert query_rule(reread.query) is far_apart_everywhere
    with pytest.raises(QueryConfigError, match="must be one of uniform, disagreement, entropy, kcenter or your own query rule"):
        QueryConfig(method="best")


def cartpole_in_my_wrapper(render_mode: str | None = None, **kwargs: Any) -> Any:
    """A module-level env factory: a registered env in a user's wrapper."""
    import gymnasium as gym

    return gym.wrappers.ClipReward(gym.make("CartPole-v1", render_mode=render_mode, **kwargs), 0.0, 0.5)


def test_an_importable_env_factory_travels_by_its_path_to_where_clips_are_rendered() -> None:
    from prefloop.envs import make_env

    spec = EnvSpec("WrappedCartPole", {"sutton_barto_reward": True}, factory=cartpole_in_my_wrapper)
    data = json.loads(json.dumps(spec.to_json()))  # what the store's env_spec meta holds
    assert data["factory"] == f"{__name__}:cartpole_in_my_wrapper"
    again = EnvSpec.from_json(data)
    check_can_render(again)  # a human-taught run may use it: the clip worker can import it
    env = make_env(again, seed=0, render_mode="rgb_array")
    env.reset()
    assert env.step(0)[1] == 0.0, "the user's wrapper and env_kwargs are applied"
    assert env.render().ndim == 3
    env.close()


class TwoRewards(torch.nn.Module):
    def forward(self, obs: Any, action: Any) -> Any:
        return obs[:, :2]


def test_bad_objects_are_refused_in_one_line(tmp_path: Path) -> None:
    import gymnasium as gym
    import torch
    from prefloop.envs import make_env
    from prefloop.reward_models import RewardEnsemble, RewardModelConfig

    for field, value in (("env_factory", "no path"), ("algo", 42), ("policy", 3.5)):
        with pytest.raises(ConfigError, match=f"^{field} must be"):
            TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, **{field: value})
    with pytest.raises(ValueError, match="member_factory must be a function"):
        RewardModelConfig(member_factory=3)  # type: ignore[arg-type]
    space = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"its module failed on obs of shape \(2, 4\) and action \(2, 2\): TypeError"):
        RewardEnsemble(space.observation_space, space.action_space, member_factory=lambda o, a: torch.nn.Linear(6, 2))
    with pytest.raises(ValueError, match="must return one reward per row"):
        RewardEnsemble(space.observation_space, space.action_space, member_factory=lambda o, a: TwoRewards())
    with pytest.raises(EnvSetupError, match="returned int, not a gymnasium.Env"):
        make_env(EnvSpec("Broken", factory=lambda **kwargs: 7))
    with pytest.raises(EnvSetupError, match="env factory of Gone .* does not import"):
        make_env(EnvSpec("Gone", factory="no_such_module_xyz:make"))


USER_MODULE = '''
import gymnasium as gym
import torch
from torch import nn

from prefloop.training.query import MethodRule, QueryConfig


def make_env(render_mode=None, **kwargs):
    return gym.wrappers.ClipReward(gym.make("CartPole-v1", render_mode=render_mode, **kwargs), 0.0, 1.0)


def newest_pairs(candidates, n_pairs, rng, preference_probs):
    return MethodRule(QueryConfig(method="uniform"))(list(candidates)[-40:], n_pairs, rng, preference_probs)


class Net(nn.Module):
    def __init__(self, observation_space, action_space):
        super().__init__()
        self.linear = nn.Linear(gym.spaces.flatdim(observation_space) + gym.spaces.flatdim(action_space), 1)

    def forward(self, obs, action):
        return self.linear(torch.cat([obs, action], dim=1))
'''

TRAIN_WITH_USER_MODULE = '''
import sys
from prefloop.reward_models import RewardModelConfig
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from prefloop.training.query import QueryConfig
import userseams

train(TrainConfig(env_id="WrappedCartPole", env_factory=userseams.make_env, run_dir=sys.argv[1], labels=20, steps=2500,
                  segment_length=25, algo="sb3_contrib:TRPO", algo_kwargs={"n_steps": 256}, eval_episodes=2,
                  query=QueryConfig(method=userseams.newest_pairs), progress_bar=False,
                  reward_model=RewardModelConfig(member_factory=userseams.Net)))
'''


@pytest.mark.slow
def test_cli_resumes_a_run_whose_objects_it_can_import(tmp_path: Path) -> None:
    """config.json names importable functions and classes by path: `prefloop train --resume`
    rebuilds the env factory, query rule, member network and algorithm from it."""
    import os

    (tmp_path / "userseams.py").write_text(USER_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = tmp_path / "run"
    first = subprocess.run([sys.executable, "-c", TRAIN_WITH_USER_MODULE, str(run)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert (config["env_factory"], config["query"]["method"], config["reward_model"]["member_factory"], config["algo"]) == (
        "userseams:make_env", "userseams:newest_pairs", "userseams:Net", "sb3_contrib:TRPO")
    (run / "summary.json").unlink()  # as if it had been stopped before its summary
    resumed = subprocess.run([sys.executable, "-m", "prefloop.cli", "train", "--resume", "--run-dir", str(run), "--no-progress"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["labels_used"] == 20


@pytest.mark.parametrize("port", [-1, 0, 70000, "8501", 8501.0, True, None])
def test_the_rater_app_refuses_a_bad_port_number_in_one_line_naming_the_range(port: object) -> None:
    # -1 used to be blamed on the host ("cannot listen on '127.0.0.1'"), 70000 passed until the app
    # failed to start three times, "8501" raised a bare int() ValueError.
    from prefloop.apps.access import AppConfigError
    from prefloop.apps.teacher import RaterApp

    with pytest.raises(AppConfigError) as refused:
        RaterApp(port=port)  # type: ignore[arg-type]
    assert str(refused.value) == f"port must be a port number between 1 and 65535, got {port!r}: e.g. RaterApp(port=8501)"


def test_the_rater_app_takes_a_numpy_port_as_an_int() -> None:
    import numpy as np
    from conftest import free_port
    from prefloop.apps.teacher import RaterApp

    app = RaterApp(port=np.int64(free_port()))
    assert type(app.port) is int


class _DiesAtStart:
    """A store teacher whose service fails for good as it starts and stops the trainer as Ctrl-C does
    (the rater app interrupts the main thread when it gives up)."""

    def __init__(self, why: str | None) -> None:
        self.why = why

    def start(self, store_url: str, run_name: str) -> None:
        import _thread

        _thread.interrupt_main()  # delivered in the main thread within a few bytecodes

    def stop(self) -> None: ...

    def check_alive(self) -> None:
        if self.why is not None:
            raise RuntimeError(self.why)


def test_a_store_teacher_that_died_stops_train_with_its_reason_not_a_bare_keyboard_interrupt(tmp_path: Path) -> None:
    # The rater app on a port taken after RaterApp() was built: train() ended in a KeyboardInterrupt
    # with no message, the reason only on app.failure.
    from prefloop.training.loop import train

    torch.set_num_threads(1)
    config = TrainConfig(env_id="CartPole-v1", labels=2, steps=600, progress_bar=False, eval_episodes=1,
                         run_dir=tmp_path / "died", teacher=_DiesAtStart("the rater app stopped 4 times"))
    with pytest.raises(RuntimeError, match="^the rater app stopped 4 times$") as stopped:
        train(config)
    assert stopped.value.__suppress_context__
    # A real Ctrl-C (the teacher is alive) stays a KeyboardInterrupt, for `prefloop: interrupted; ...`.
    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(config, run_dir=tmp_path / "ctrl-c", teacher=_DiesAtStart(None)))


def test_the_rater_app_refusals_name_its_python_arguments_and_prefloop_run_names_its_options(
    tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    # From Python the fix is RaterApp(port=...)/token=..., not `--port`/`--token` (prefloop run's options).
    import socket

    from prefloop.apps.access import AppConfigError
    from prefloop.apps.launch import PortInUseError
    from prefloop.apps.teacher import RaterApp
    from prefloop.cli.main import main

    with pytest.raises(AppConfigError, match="^token must be at least 8 characters"):
        RaterApp(port=8501, token="short")
    with pytest.raises(AppConfigError, match="^admin_token must differ from token: "):
        RaterApp("0.0.0.0", 8501, token="same-token", admin_token="same-token")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"^port {port} on 127.0.0.1 is already in use .*stop it, or pass a free port, e\.g\. RaterApp\(port=\d+\)$"):
            RaterApp(port=port)
        assert main(["run", "--env", "CartPole-v1", "--port", str(port), "--run-dir", str(tmp_path / "r")]) == 2
        assert "pass --port with a free port, e.g. --port" in capsys.readouterr().err
        assert main(["run", "--env", "CartPole-v1", "--token", "short", "--run-dir", str(tmp_path / "r")]) == 2
        assert "error: --token must be at least 8 characters" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
