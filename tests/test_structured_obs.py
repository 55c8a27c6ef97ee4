"""Dict and Tuple observations: the flat vector, its layout, and the reward model that reads it."""

from __future__ import annotations

from collections import OrderedDict

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from prefloop.reward_models import (
    RewardEnsemble,
    UnsupportedSpaceError,
    load_reward_model,
    save_reward_model,
    space_from_json,
    space_to_json,
)

from prefloop.structured_obs import ObservationFlattener, StructuredSpaceError

torch.set_num_threads(1)

NESTED = spaces.Dict(
    {
        "pos": spaces.Box(-2.0, 2.0, (3,), np.float32),
        "mode": spaces.Discrete(4, start=-1),
        "inner": spaces.Tuple(
            (spaces.MultiDiscrete([2, 3], start=[1, 0]), spaces.MultiBinary(3), spaces.Box(-np.inf, np.inf, (2, 2)))
        ),
    },
    seed=3,
)


def _batch(space: gym.Space, samples: list) -> object:
    """Stack samples leaf-wise, as an SB3 VecEnv batches a Dict or Tuple observation."""
    if isinstance(space, spaces.Dict):
        return {k: _batch(s, [x[k] for x in samples]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_batch(s, [x[i] for x in samples]) for i, s in enumerate(space.spaces))
    return np.stack([np.asarray(x) for x in samples])


def test_flat_vector_is_gymnasium_flatten_for_nested_spaces() -> None:
    flattener = ObservationFlattener(NESTED)
    samples = [NESTED.sample() for _ in range(20)]
    expected = np.stack([gym.spaces.flatten(NESTED, x) for x in samples]).astype(np.float32)
    assert flattener.dim == gym.spaces.flatdim(NESTED) == 3 + 4 + 5 + 3 + 4
    np.testing.assert_array_equal(flattener.batch(_batch(NESTED, samples)), expected)
    np.testing.assert_array_equal(np.stack([flattener.one(x) for x in samples]), expected)
    # the layout the docs give: sorted keys, depth-first, one-hot for discrete leaves
    assert [(leaf.name, leaf.start, leaf.stop) for leaf in flattener.leaves] == [
        ("inner/0", 0, 5), ("inner/1", 5, 8), ("inner/2", 8, 12), ("mode", 12, 16), ("pos", 16, 19),
    ]
    restored = gym.spaces.unflatten(NESTED, expected[0])
    assert int(restored["mode"]) == int(samples[0]["mode"])


def test_discrete_leaves_as_replay_buffers_hold_them() -> None:
    space = spaces.Dict({"cell": spaces.Discrete(5), "x": spaces.Box(0, 1, (1,))})
    as_vec_env = {"cell": np.array([0, 4]), "x": np.zeros((2, 1), np.float32)}
    as_buffer = {"cell": np.array([[0.0], [4.0]], np.float32), "x": np.zeros((2, 1), np.float32)}
    flattener = ObservationFlattener(space)
    np.testing.assert_array_equal(flattener.batch(as_vec_env), flattener.batch(as_buffer))
    with pytest.raises(ValueError, match="'cell'"):
        flattener.batch({"cell": np.array([5, 0]), "x": np.zeros((2, 1))})
    with pytest.raises(ValueError, match="no key 'x'"):
        flattener.batch({"cell": np.array([1, 0])})


def test_image_and_non_vector_leaves_are_refused_with_one_line() -> None:
    image = spaces.Dict({"pixels": spaces.Box(0, 255, (16, 16, 3), np.uint8), "state": spaces.Box(-1, 1, (2,))})
    with pytest.raises(StructuredSpaceError) as info:
        ObservationFlattener(image)
    message = str(info.value)
    assert "'pixels'" in message and "image" in message and "\n" not in message
    with pytest.raises(UnsupportedSpaceError, match="'pixels'"):
        RewardEnsemble(image, spaces.Discrete(2))
    with pytest.raises(StructuredSpaceError, match="'note'.*Text"):
        ObservationFlattener(spaces.Dict({"note": spaces.Text(5)}))
    with pytest.raises(StructuredSpaceError, match="no leaves"):
        ObservationFlattener(spaces.Dict({}))


def test_reward_model_reads_the_flat_vector_or_the_structure() -> None:
    model = RewardEnsemble(NESTED, spaces.Box(-1, 1, (2,)), n_members=2, hidden_sizes=(8,), seed=0)
    assert model.obs_encoder.dim == gym.spaces.flatdim(NESTED)
    samples = [NESTED.sample() for _ in range(6)]
    flat = ObservationFlattener(NESTED).batch(_batch(NESTED, samples))
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 2)).astype(np.float32)
    np.testing.assert_allclose(model.predict(flat, actions), model.predict(_batch(NESTED, samples), actions), rtol=1e-6)
    # numpy and torch paths agree, and the bounded Box leaf is scaled onto [-1, 1]
    torch_rewards = model(torch.as_tensor(flat), torch.as_tensor(actions)).mean(0).detach().numpy()
    np.testing.assert_allclose(model.predict(flat, actions), torch_rewards, rtol=1e-4, atol=1e-6)
    encoded = model.obs_encoder.encode_numpy(flat)
    np.testing.assert_allclose(encoded[:, 16:19], flat[:, 16:19] / 2.0, rtol=1e-6)
    np.testing.assert_array_equal(encoded[:, :16], flat[:, :16])
    with pytest.raises(ValueError, match=r"\(B, 19\)"):
        model.predict(flat[:, :5], actions)


def test_structured_reward_model_saves_and_loads_with_its_layout(tmp_path) -> None:
    # key order not sorted: the flat layout follows it, so saving must keep it
    space = spaces.Dict(OrderedDict([("z", spaces.Box(-1, 1, (2,))), ("a", spaces.Discrete(3))]))
    assert space_from_json(space_to_json(space)) == space
    assert list(space_from_json(space_to_json(space)).spaces) == ["z", "a"]
    tuple_space = spaces.Tuple((spaces.Discrete(2), spaces.Dict({"v": spaces.MultiBinary(2)})))
    assert space_from_json(space_to_json(tuple_space)) == tuple_space
    model = RewardEnsemble(space, spaces.Discrete(2), n_members=2, hidden_sizes=(4,), seed=1)
    save_reward_model(model, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.observation_space == space and list(loaded.observation_space.spaces) == ["z", "a"]
    obs = {"z": np.array([[0.5, -0.5], [0.1, 0.2]], np.float32), "a": np.array([2, 0])}
    np.testing.assert_allclose(loaded.predict(obs, np.array([0, 1])), model.predict(obs, np.array([0, 1])), rtol=1e-6)


class _NestedEnv(gym.Env):
    observation_space = NESTED
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_nested_observations_reach_the_policy_as_one_leaf_dict_with_the_same_flat_vector() -> None:
    from prefloop.envs.structured import LeafDictObservation, needs_leaf_dict

    assert needs_leaf_dict(NESTED) and needs_leaf_dict(spaces.Tuple((spaces.Discrete(2),)))
    assert not needs_leaf_dict(spaces.Dict({"a": spaces.Discrete(2)})) and not needs_leaf_dict(spaces.Box(0, 1))
    raw = _NestedEnv()
    wrapped = LeafDictObservation(_NestedEnv())
    assert list(wrapped.observation_space.spaces) == ["inner/0", "inner/1", "inner/2", "mode", "pos"]
    original, _ = raw.reset(seed=5)
    leaf_dict, _ = wrapped.reset(seed=5)
    assert wrapped.observation_space.contains(leaf_dict)
    np.testing.assert_array_equal(
        gym.spaces.flatten(wrapped.observation_space, leaf_dict), gym.spaces.flatten(NESTED, original)
    )
    clash = type("_Clash", (_NestedEnv,), {"observation_space": spaces.Dict(
        {"a/b": spaces.Discrete(2), "a": spaces.Dict({"b": spaces.Discrete(2)})})})
    with pytest.raises(StructuredSpaceError, match=r"\['a/b'\]"):
        LeafDictObservation(clash())


SCALAR_LEAF = spaces.Dict({"height": spaces.Box(-np.inf, np.inf, ()), "joints": spaces.Box(-1.0, 1.0, (3,))})


def test_a_scalar_box_leaf_reaches_sb3_as_shape_1_and_a_policy_trains_on_it() -> None:
    """DeepMind Control's walker has ``height: Box(())``; SB3's MultiInputPolicy cannot flatten a
    ``(B,)`` batch, so the leaf reaches it as ``(1,)`` with the same flat vector."""
    from prefloop.envs.structured import LeafDictObservation, needs_leaf_dict
    from stable_baselines3 import SAC

    assert needs_leaf_dict(SCALAR_LEAF)
    scalar_env = type("_Scalar", (_NestedEnv,), {"observation_space": SCALAR_LEAF,
                                                 "action_space": spaces.Box(-1.0, 1.0, (2,))})
    wrapped = LeafDictObservation(scalar_env())
    assert wrapped.observation_space["height"].shape == (1,)
    obs, _ = wrapped.reset(seed=3)
    original, _ = scalar_env().reset(seed=3)
    assert wrapped.observation_space.contains(obs)
    np.testing.assert_array_equal(gym.spaces.flatten(wrapped.observation_space, obs), gym.spaces.flatten(SCALAR_LEAF, original))
    SAC("MultiInputPolicy", wrapped, learning_starts=8, batch_size=8, seed=0).learn(16)  # raised IndexError before
