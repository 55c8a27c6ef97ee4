"""Reward ensembles: the Bradley-Terry loss, absorbing-step masking, learning, normalisation, I/O."""

from __future__ import annotations

import copy
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.reward_models import (
    FitStats,
    RewardEnsemble,
    RewardModelConfig,
    RewardTrainer,
    UnsupportedSpaceError,
    bradley_terry_loss,
    build_reward_model,
    load_reward_model,
    save_reward_model,
    validation_mask,
)
from scipy.stats import spearmanr

from prefloop.types import LabeledPair, Segment

torch.set_num_threads(1)

L = 10
OBS_1D = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
ACT_1D = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)


def make_segment(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_valid: int | None = None) -> Segment:
    """A segment of length len(rewards); steps from n_valid on are zeroed like absorbing steps."""
    length = len(rewards)
    n_valid = length if n_valid is None else n_valid
    obs, actions, rewards = obs.copy(), actions.copy(), rewards.astype(np.float32).copy()
    obs[n_valid:] = 0
    actions[n_valid:] = 0
    rewards[n_valid:] = 0
    return Segment(
        obs=obs.astype(np.float32),
        actions=actions,
        true_rewards=rewards,
        n_valid=n_valid,
        terminated=n_valid < length,
        episode_seed=0,
        start_step=0,
        episode_actions=actions[:n_valid],
    )


def label_by_true_return(left: Segment, right: Segment, pair_id: int) -> LabeledPair:
    diff = right.true_return - left.true_return
    target = 0.5 if abs(diff) < 1e-6 else float(diff > 0)
    return LabeledPair(left=left, right=right, target=target, pair_id=pair_id)


# ---------------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_matches_hand_computed_values() -> None:
    # R_left = 1, R_right = 3: sigmoid(2) = 0.8807970779778823,
    # p(right) = 0.9 * 0.8807970779778823 + 0.1 * 0.5 = 0.8427173701800942, 1 - p = 0.1572826298199058.
    left = torch.tensor([[1.0]])
    right = torch.tensor([[3.0]])
    loss_right = bradley_terry_loss(left, right, torch.tensor([1.0]), 0.1)
    loss_equal = bradley_terry_loss(left, right, torch.tensor([0.5]), 0.1)
    loss_left = bradley_terry_loss(left, right, torch.tensor([0.0]), 0.1)
    assert loss_right.item() == pytest.approx(0.17112364388500304, rel=1e-6)  # -ln(0.84271737)
    assert loss_equal.item() == pytest.approx(1.0104172729915175, rel=1e-6)  # mean of the two
    assert loss_left.item() == pytest.approx(1.8497109020980318, rel=1e-6)  # -ln(0.15728263)
    # Without random responses it is the plain logistic loss: -ln(sigmoid(2)) = 0.12692801104297263.
    assert bradley_terry_loss(left, right, torch.tensor([1.0]), 0.0).item() == pytest.approx(0.12692801104297263, rel=1e-6)


def test_bradley_terry_loss_averages_over_members_and_pairs_and_stays_finite() -> None:
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    right = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    loss = bradley_terry_loss(left, right, torch.tensor([1.0, 0.5]), 0.1)
    # Pair 2 has equal returns: p = 0.5, loss ln 2 for every member.
    assert loss.item() == pytest.approx((0.17112364388500304 + math.log(2)) / 2, rel=1e-6)

    # A confidently wrong huge return difference: finite loss and gradient. With rr = 0.1 the
    # loss is capped at -ln(0.05) because the teacher may have answered at random.
    huge = torch.tensor([[1e4]], requires_grad=True)
    capped = bradley_terry_loss(torch.zeros(1, 1), huge, torch.tensor([0.0]), 0.1)
    capped.backward()
    assert capped.item() == pytest.approx(-math.log(0.05), rel=1e-5)
    assert torch.isfinite(huge.grad).all()
    plain = bradley_terry_loss(torch.zeros(1, 1), torch.tensor([[1e4]]), torch.tensor([0.0]), 0.0)
    assert plain.item() == pytest.approx(1e4, rel=1e-6)


# ---------------------------------------------------------------------------------- masking


def test_absorbing_steps_contribute_exactly_zero() -> None:
    model = RewardEnsemble(OBS_1D, ACT_1D, n_members=3, seed=1)
    rng = np.random.default_rng(0)
    k = 4
    obs = rng.normal(size=(1, L, 1)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(1, L, 1)).astype(np.float32)
    mask = np.zeros((1, L), dtype=np.float32)
    mask[0, :k] = 1

    with torch.no_grad():
        returns = model.segment_returns(torch.tensor(obs), torch.tensor(actions), torch.tensor(mask))
        garbage_obs, garbage_actions = obs.copy(), actions.copy()
        garbage_obs[0, k:] = 1e3
        garbage_actions[0, k:] = -7.0
        returns_garbage = model.segment_returns(
            torch.tensor(garbage_obs), torch.tensor(garbage_actions), torch.tensor(mask)
        )
        per_step = model(torch.tensor(obs[0, :k]), torch.tensor(actions[0, :k]))  # (M, k)

    assert returns.shape == (3, 1)
    assert torch.equal(returns, returns_garbage)
    torch.testing.assert_close(returns[:, 0], per_step.sum(1))
    # The absorbing steps would have had non-zero learned rewards had they not been masked.
    with torch.no_grad():
        assert model(torch.tensor(obs[0, k:]), torch.tensor(actions[0, k:])).abs().min() > 0

    # The Segment API agrees: a segment terminated at step k returns the sum of its first k rewards.
    seg = make_segment(obs[0], actions[0], np.ones(L), n_valid=k)
    expected = per_step.mean(0).sum().item() / float(model.reward_scale)
    assert model.predict_segment_returns([seg])[0] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- learning


def test_learns_to_rank_segments_by_true_return() -> None:
    rng = np.random.default_rng(0)

    def segments(n: int) -> list[Segment]:
        out = []
        for _ in range(n):
            obs = rng.uniform(-1.5, 1.5) + rng.normal(0, 0.3, size=(L, 1))
            actions = rng.uniform(-1, 1, size=(L, 1)).astype(np.float32)
            out.append(make_segment(obs, actions, -(obs[:, 0] ** 2)))
        return out

    train, held_out = segments(400), segments(100)
    pairs = [label_by_true_return(train[2 * i], train[2 * i + 1], pair_id=i) for i in range(200)]
    config = RewardModelConfig(lr=3e-3, seed=0, val_fraction=0.2)  # a held-out split, as before prequential accuracy
    model = build_reward_model(OBS_1D, ACT_1D, config)
    stats = RewardTrainer(model, config).fit(pairs)

    assert isinstance(stats, FitStats)
    assert stats.n_train + stats.n_val == 200 and stats.n_val > 0
    assert stats.steps > 0
    assert stats.val_accuracy is not None and stats.val_accuracy > 0.8
    predicted = model.predict_segment_returns(held_out)
    rho = spearmanr(predicted, [s.true_return for s in held_out]).statistic
    assert rho > 0.9


def test_alive_reward_is_learned_positive_when_episodes_terminate() -> None:
    # Every real step is worth +1 whatever the observation; segments that terminate early are
    # worse. With absorbing steps pinned at 0 the model must learn a positive per-step reward,
    # otherwise the policy would be rewarded for dying early.
    rng = np.random.default_rng(1)
    segs = []
    for _ in range(240):
        n_valid = L if rng.random() < 0.4 else int(rng.integers(1, L))
        obs = rng.uniform(-1, 1, size=(L, 1))
        actions = rng.uniform(-1, 1, size=(L, 1)).astype(np.float32)
        segs.append(make_segment(obs, actions, np.ones(L), n_valid=n_valid))
    assert any(s.terminated for s in segs) and not all(s.terminated for s in segs)
    pairs = [label_by_true_return(segs[2 * i], segs[2 * i + 1], pair_id=i) for i in range(120)]
    config = RewardModelConfig(lr=3e-3, seed=0)
    model = build_reward_model(OBS_1D, ACT_1D, config)
    RewardTrainer(model, config).fit(pairs)

    grid_obs = np.linspace(-1, 1, 41, dtype=np.float32)[:, None]
    grid_act = rng.uniform(-1, 1, size=(41, 1)).astype(np.float32)
    assert (model.predict(grid_obs, grid_act) > 0).all()
    full = [s for s in segs if not s.terminated][:5]
    short = [s for s in segs if s.n_valid <= 3][:5]
    assert model.predict_segment_returns(full).min() > model.predict_segment_returns(short).max()


def test_fit_warm_starts_and_keeps_pairs_on_the_same_side_of_the_split() -> None:
    keys = np.arange(500)
    first = validation_mask(keys[:300], seed=3, val_fraction=0.2)
    later = validation_mask(keys, seed=3, val_fraction=0.2)
    assert np.array_equal(first, later[:300])
    assert 0.1 < later.mean() < 0.3
    assert not np.array_equal(later, validation_mask(keys, seed=4, val_fraction=0.2))

    rng = np.random.default_rng(0)
    segs = [make_segment(rng.normal(size=(L, 1)), rng.uniform(-1, 1, (L, 1)).astype(np.float32), rng.normal(size=L)) for _ in range(20)]
    few = [label_by_true_return(segs[2 * i], segs[2 * i + 1], pair_id=i) for i in range(5)]
    config = RewardModelConfig(epochs=2, seed=0)
    trainer = RewardTrainer(build_reward_model(OBS_1D, ACT_1D, config), config)
    stats = trainer.fit(few)
    # Fewer than 10 pairs: everything trains, nothing is held out.
    assert (stats.n_train, stats.n_val, stats.val_loss, stats.val_accuracy) == (5, 0, None, None)
    assert stats.steps == 2
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit(few)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_trainer_rejects_bad_pairs_and_mismatched_config() -> None:
    config = RewardModelConfig(n_members=2)
    model = build_reward_model(OBS_1D, ACT_1D, config)
    with pytest.raises(ValueError, match="n_members"):
        RewardTrainer(model, RewardModelConfig(n_members=3))
    trainer = RewardTrainer(model, config)
    seg = make_segment(np.zeros((L, 1)), np.zeros((L, 1), np.float32), np.zeros(L))
    with pytest.raises(ValueError, match="at least one"):
        trainer.fit([])
    with pytest.raises(ValueError, match="target"):
        trainer.fit([LabeledPair(left=seg, right=seg, target=1.5, pair_id=7)])
    short = make_segment(np.zeros((L - 1, 1)), np.zeros((L - 1, 1), np.float32), np.zeros(L - 1))
    with pytest.raises(ValueError, match="length"):
        trainer.fit([LabeledPair(left=seg, right=short, target=1.0)])


# ---------------------------------------------------------------------------------- spaces


def test_discrete_and_multidiscrete_actions_are_one_hot() -> None:
    model = RewardEnsemble(OBS_1D, gym.spaces.Discrete(3), n_members=2)
    encoded = model.encode(torch.zeros(3, 1), torch.tensor([2, 0, 1]))
    assert torch.equal(encoded[:, 1:], torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]))
    obs = np.zeros((3, 1), np.float32)
    # Integer actions shaped (B,) as SB3 gives them, or (B, 1), give the same rewards.
    np.testing.assert_array_equal(model.predict(obs, np.array([2, 0, 1])), model.predict(obs, np.array([[2], [0], [1]])))
    with pytest.raises(ValueError, match="out of range"):
        model.predict(obs, np.array([3, 0, 1]))

    multi = RewardEnsemble(gym.spaces.Discrete(4, start=1), gym.spaces.MultiDiscrete([2, 3]), n_members=2)
    enc = multi.encode(torch.tensor([1.0, 4.0]), torch.tensor([[1, 0], [0, 2]]))
    # Observation one-hot over {1, 2, 3, 4}, then the two action one-hots side by side.
    assert torch.equal(enc, torch.tensor([[1.0, 0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0, 1]]))
    binary = RewardEnsemble(gym.spaces.MultiBinary(3), gym.spaces.Discrete(2), n_members=1)
    assert binary.predict(np.array([[1, 0, 1]], np.int8), np.array([1])).shape == (1,)


@pytest.mark.parametrize(
    ("space", "where", "name"),
    [
        (gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), "action", "Dict"),
        (gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2))), "action", "Tuple"),
        (gym.spaces.Text(5), "obs", "Text"),
        (gym.spaces.Sequence(gym.spaces.Discrete(2)), "obs", "Sequence"),
    ],
)
def test_unsupported_spaces_are_named(space: gym.Space, where: str, name: str) -> None:
    obs_space, act_space = (space, ACT_1D) if where == "obs" else (OBS_1D, space)
    with pytest.raises(UnsupportedSpaceError, match=name) as info:
        RewardEnsemble(obs_space, act_space)
    assert "Dict and Tuple spaces of those" in str(info.value)  # names what works instead
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_members": 0},
        {"hidden_sizes": (64, 0)},
        {"hidden_sizes": 64},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"weight_decay": -1e-4},
        {"batch_size": 0},
        {"epochs": 0},
        {"epochs": 2.5},
        {"max_steps_per_fit": 0},
        {"random_response": 1.0},
        {"random_response": -0.1},
        {"val_fraction": 1.0},
        {"seed": "zero"},
        {"seed": -1},
    ],
)
def test_invalid_config_values_raise(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        RewardModelConfig(**kwargs)


# ---------------------------------------------------------------------------------- predict


def test_predict_shape_dtype_and_preference_probs() -> None:
    obs_space = gym.spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32)
    model = RewardEnsemble(obs_space, gym.spaces.Discrete(4), n_members=3, seed=5)
    rng = np.random.default_rng(0)
    for batch in (1, 7):
        obs = rng.uniform(-1, 1, size=(batch, 2, 3))  # float64 in, float32 out
        actions = rng.integers(0, 4, size=batch)
        out = model.predict(obs, actions)
        assert out.shape == (batch,) and out.dtype == np.float32
        with torch.no_grad():
            expected = model(torch.tensor(obs, dtype=torch.float32), torch.tensor(actions)).mean(0)
        np.testing.assert_allclose(out, expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        model.predict(np.zeros((2, 6, 1)), np.zeros(2, np.int64))

    segs = [make_segment(rng.uniform(-1, 1, (L, 2, 3)), rng.integers(0, 4, L), np.zeros(L)) for _ in range(4)]
    probs = model.preference_probs(segs[:2], segs[2:])
    assert probs.shape == (3, 2) and probs.dtype == np.float64
    obs, actions = (torch.tensor(np.stack([s.obs for s in segs])), torch.tensor(np.stack([s.actions for s in segs])))
    with torch.no_grad():
        returns = model.segment_returns(obs, actions, torch.ones(4, L)).double()
    np.testing.assert_allclose(probs, torch.sigmoid(returns[:, 2:] - returns[:, :2]).numpy(), rtol=1e-5)


def test_normalization_scales_but_never_shifts() -> None:
    model = RewardEnsemble(OBS_1D, ACT_1D, n_members=2, seed=0)
    with torch.no_grad():
        model.biases[-1].add_(5.0)  # every raw reward is now clearly positive
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 1)).astype(np.float32)
    actions = rng.uniform(-1, 1, size=(200, 1)).astype(np.float32)
    before = model.predict(obs, actions)
    assert (before > 0).all()

    model.update_normalization(obs, actions)
    after = model.predict(obs, actions)
    scale = float(model.reward_scale)
    assert scale == pytest.approx(float(np.sqrt(np.mean(before.astype(np.float64) ** 2))), rel=1e-4)
    assert (after > 0).all()  # a mean-shift would have made about half of them negative
    np.testing.assert_allclose(after * scale, before, rtol=1e-5)
    assert np.mean(after.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)

    with torch.no_grad():  # a constant positive reward: scaled to exactly 1 per step, still positive
        for w in model.weights:
            w.zero_()
    model.update_normalization(obs, actions)
    np.testing.assert_allclose(model.predict(obs, actions), 1.0, rtol=1e-5)
    with torch.no_grad():  # a reward model that outputs 0: the scale floors instead of dividing by 0
        for b in model.biases:
            b.zero_()
    model.update_normalization(obs, actions)
    assert float(model.reward_scale) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        model.update_normalization(obs[:1], actions[:1])


# ---------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_without_pickle(tmp_path) -> None:
    obs_space = gym.spaces.Box(
        low=np.array([-1.0, -np.inf], np.float32), high=np.array([1.0, np.inf], np.float32), dtype=np.float32
    )
    act_space = gym.spaces.MultiDiscrete([3, 2])
    model = RewardEnsemble(obs_space, act_space, n_members=2, hidden_sizes=(8,), seed=3)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(50, 2)).astype(np.float32)
    actions = np.stack([rng.integers(0, 3, 50), rng.integers(0, 2, 50)], axis=1)
    model.update_normalization(obs, actions)

    save_reward_model(model, tmp_path / "rm", extra_metadata={"labels": 200, "env": "CartPole-v1"})
    assert sorted(p.name for p in (tmp_path / "rm").iterdir()) == ["reward_model.json", "reward_model.safetensors"]
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta["observation_space"]["type"] == "Box" and meta["observation_space"]["high"] == [1.0, "inf"]
    assert meta["action_space"] == {"type": "MultiDiscrete", "shape": [2], "nvec": [3, 2], "start": [0, 0], "dtype": "int64"}
    assert meta["extra"] == {"labels": 200, "env": "CartPole-v1"}
    assert meta["reward_scale"] == pytest.approx(float(model.reward_scale))

    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.observation_space == obs_space and loaded.action_space == act_space
    assert loaded.hidden_sizes == (8,) and loaded.n_members == 2
    np.testing.assert_array_equal(loaded.predict(obs, actions), model.predict(obs, actions))


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="reward_model.json"):
        load_reward_model(tmp_path / "nowhere")
    model = RewardEnsemble(OBS_1D, ACT_1D, n_members=1, hidden_sizes=(4,))
    save_reward_model(model, tmp_path)

    (tmp_path / "reward_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="reward_model.safetensors"):
        load_reward_model(tmp_path)
    (tmp_path / "reward_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="reward_model.safetensors"):
        load_reward_model(tmp_path)

    (tmp_path / "reward_model.json").write_text("{not json")
    with pytest.raises(ValueError, match="reward_model.json"):
        load_reward_model(tmp_path)
    meta_path = tmp_path / "reward_model.json"
    save_reward_model(model, tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["hidden_sizes"] = [5]  # no longer matches the stored weights
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match"):
        load_reward_model(tmp_path)
    del meta["action_space"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="malformed"):
        load_reward_model(tmp_path)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_reward_model(model, tmp_path / "other", extra_metadata={"bad": object()})


def _subnormal_count(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


def test_a_fit_flushes_subnormals_and_gives_the_caller_its_mode_back(monkeypatch) -> None:
    """A confident model's Bradley-Terry gradients go subnormal (sigmoid tails), which x86 CPUs
    compute through slow microcode: the fit runs with them flushed to 0, gives the caller its own
    mode back, and computes the same model whichever mode its caller (the trainer, the background
    fit worker, a user's script) had."""
    from prefloop.reward_models.subnormals import flushing_subnormals

    rng = np.random.default_rng(1)
    segments = []
    for _ in range(120):
        obs = rng.uniform(-20, 20) + rng.normal(0, 1, size=(L, 1))  # returns ~ +-200: margins far past 87
        segments.append(make_segment(obs, rng.uniform(-1, 1, size=(L, 1)).astype(np.float32), obs[:, 0]))
    pairs = [label_by_true_return(segments[2 * i], segments[2 * i + 1], pair_id=i) for i in range(60)]
    config = RewardModelConfig(seed=0, random_response=0.0, lr=3e-3)
    trainer = RewardTrainer(build_reward_model(OBS_1D, ACT_1D, config), config)
    for n in (20, 40):
        trainer.fit(pairs[:n])

    # The situation is real: with flushing off, the next batch's gradients reach subnormal values.
    features, mask, targets = trainer._encode(pairs, np.array([p.target for p in pairs]))
    flat_features = features.reshape(-1, *features.shape[-2:]).requires_grad_(True)
    returns = trainer.model.returns_from_features(flat_features, mask.reshape(-1, mask.shape[-1])).reshape(-1, len(pairs), 2)
    bradley_terry_loss(returns[..., 0], returns[..., 1], targets, 0.0).backward()
    assert not flushing_subnormals()
    assert _subnormal_count(flat_features.grad) > 0

    modes_inside: list[bool] = []
    encode = RewardTrainer._encode

    def recording_encode(self, *args):
        modes_inside.append(flushing_subnormals())
        return encode(self, *args)

    monkeypatch.setattr(RewardTrainer, "_encode", recording_encode)
    fitted = {}
    for callers_mode in (False, True):
        twin = copy.deepcopy(trainer)
        torch.set_flush_denormal(callers_mode)
        try:
            twin.fit(pairs)
            assert flushing_subnormals() == callers_mode  # the caller's mode comes back
        finally:
            torch.set_flush_denormal(False)
        fitted[callers_mode] = twin.model.state_dict()
    assert modes_inside == [True, True]
    assert all(torch.equal(fitted[False][k], fitted[True][k]) for k in fitted[False])
