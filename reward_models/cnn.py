"""A convolutional reward ensemble for image observations (uint8 frames or frame stacks).

Each member is a small CNN ``r(image, action)``: a convolutional torso over the image (by default
the Nature-DQN one: 32 8x8/4, 64 4x4/2, 64 3x3/1, then 512 units), its features concatenated with
the encoded action, then an MLP head of ``hidden_sizes`` with leaky ReLUs, as in the MLP
ensemble. The ensemble, the Bradley-Terry fit, the absorbing-step mask and the reward scale are
:class:`~prefloop.reward_models.RewardEnsemble`'s, unchanged.

Images stay uint8 until they enter a member: ``encode`` does not produce float features but the
*bytes* of each step -- the pixels as uint8, then the encoded action's float32 bytes -- so the
trainer's cache of every labelled step (``(P, 2, L, in)``) is 4x smaller than float pixels would be,
and the network converts to float and scales by 1/255 itself.

Input standardisation: not per pixel. The MLP ensemble standardises every input feature with the
labelled steps' mean and std (floored at 0.05); applied per pixel this would blow up pixels that
happen to be constant in the labels (a background that later changes) by up to 20x, and the
statistics would cost a float64 pass over every labelled frame per fit. Pixels are scaled by a
fixed 1/255 instead (as SB3's CnnPolicy does), and action encodings are already in [-1, 1] or
one-hot, so :meth:`CnnRewardEnsemble.fit_input_normalization` does nothing.

Layout: channel-first ``(C, H, W)`` and channel-last ``(H, W, C)`` images are told apart as SB3
does (:func:`stable_baselines3.common.preprocessing.is_image_space_channels_first`); a 2-D
``(H, W)`` image is one channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.preprocessing import is_image_space_channels_first
from torch import nn

from .ensemble import RewardEnsemble
from .spaces import SpaceEncoder, make_encoder

# (out_channels, kernel, stride) of each conv layer, and the width of the torso's linear layer.
NATURE_CONV = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
NATURE_FEATURES = 512
CNN_TORSOS = {"nature": (NATURE_CONV, NATURE_FEATURES)}
# Christiano et al. (2017)'s Atari reward net: four 16-channel convolutions and 64 units; about a
# quarter of the Nature torso's arithmetic on 84x84 frames, which is what a CPU-only run affords.
CHRISTIANO_CONV = ((16, 7, 3), (16, 5, 2), (16, 3, 1), (16, 3, 1))
CHRISTIANO_FEATURES = 64
CNN_TORSOS["christiano"] = (CHRISTIANO_CONV, CHRISTIANO_FEATURES)
_LEAKY_SLOPE = 0.01
# Images per forward pass when no gradient is needed (bounds the memory of the conv activations).
_CNN_CHUNK_ROWS = 512


def is_image_observation_space(space: gym.Space) -> bool:
    """True for a uint8 Box with bounds 0..255 and 2 or 3 dimensions (a frame or a frame stack):
    the observations a CNN reward model and SB3's ``CnnPolicy`` are chosen for."""
    if not isinstance(space, gym.spaces.Box) or space.dtype != np.uint8 or len(space.shape) not in (2, 3):
        return False
    if not (np.all(space.low == 0) and np.all(space.high == 255)):
        return False
    # Height and width wherever the channels are: the last two dimensions of an (H, W, 3) frame
    # are (W, 3), which read as too small took every channel-last image for a vector.
    _, height, width, _ = image_layout(space)
    return min(height, width) >= 8


def image_layout(space: gym.spaces.Box) -> tuple[int, int, int, bool]:
    """``(channels, height, width, channels_last)`` of an image space."""
    shape = tuple(int(s) for s in space.shape)
    if len(shape) == 2:
        return 1, shape[0], shape[1], False
    if is_image_space_channels_first(space):
        return shape[0], shape[1], shape[2], False
    return shape[2], shape[0], shape[1], True


class _Member(nn.Module):
    """One member: conv torso -> ``features`` units -> concat action -> MLP head -> 1."""

    def __init__(self, channels: int, height: int, width: int, action_dim: int, conv: Sequence[tuple[int, int, int]],
                 features: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = channels
        for out_ch, kernel, stride in conv:
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride), nn.ReLU()]
            in_ch = out_ch
        layers.append(nn.Flatten())
        convs = nn.Sequential(*layers)
        with torch.no_grad():
            try:
                flat = convs(torch.zeros(1, channels, height, width)).shape[1]
            except RuntimeError as exc:
                raise ValueError(f"images of {height}x{width} pixels are too small for the conv layers {tuple(conv)}") from exc
        self.torso = nn.Sequential(convs, nn.Linear(flat, features), nn.ReLU())
        sizes = (features + action_dim, *hidden_sizes, 1)
        head: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            head.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                head.append(nn.LeakyReLU(_LEAKY_SLOPE))
        self.head = nn.Sequential(*head)

    def forward(self, images: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``images (B, C, H, W)`` float in [0, 1], ``actions (B, action_dim)`` -> ``(B,)``."""
        return self.head(torch.cat((self.torso(images), actions), dim=1)).squeeze(-1)


class CnnRewardEnsemble(RewardEnsemble):
    """``n_members`` CNN rewards ``r(image, action)``; the segment-level API of :class:`RewardEnsemble`.

    Args:
        observation_space: uint8 Box ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)`` with bounds 0..255.
        action_space: Box, Discrete, MultiDiscrete or MultiBinary.
        n_members: ensemble size ``M``.
        hidden_sizes: the head's hidden widths after the torso.
        seed: seeds the initial weights (members differ).
        conv: ``(out_channels, kernel, stride)`` per conv layer (default: Nature-DQN).
        torso_features: width of the torso's linear layer (default 512).
    """

    chunk_rows = _CNN_CHUNK_ROWS
    architecture = "cnn"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        n_members: int = 3,
        hidden_sizes: Sequence[int] = (64, 64),
        seed: int = 0,
        conv: Sequence[Sequence[int]] = NATURE_CONV,
        torso_features: int = NATURE_FEATURES,
    ) -> None:
        nn.Module.__init__(self)  # not RewardEnsemble's: it would build the stacked MLP weights
        if not is_image_observation_space(observation_space):
            raise ValueError(
                f"CnnRewardEnsemble needs a uint8 image space (Box 0..255 of shape (C, H, W), (H, W, C) "
                f"or (H, W)), got {observation_space!r}; use RewardEnsemble for other observations"
            )
        if int(n_members) < 1 or int(seed) < 0:
            raise ValueError(f"n_members must be >= 1 and seed >= 0, got {n_members}, {seed}")
        self.conv = tuple((int(c), int(k), int(s)) for c, k, s in conv)
        if not self.conv or any(v < 1 for layer in self.conv for v in layer) or int(torso_features) < 1:
            raise ValueError(f"conv layers and torso_features must be positive, got {tuple(conv)}, {torso_features}")
        self.torso_features = int(torso_features)
        self.observation_space = observation_space
        self.action_space = action_space
        self.n_members = int(n_members)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must all be >= 1, got {tuple(hidden_sizes)}")
        self.seed = int(seed)
        self.member_factory = None  # the members are this class's CNNs
        self.action_squares = False  # its actions go to the head as they are
        self.obs_encoder = _ImageChecker(observation_space)
        self.action_encoder: SpaceEncoder = make_encoder(action_space, "action")
        self.channels, self.height, self.width, self.channels_last = image_layout(observation_space)
        self._pixels = int(np.prod(observation_space.shape))
        self.input_dim = self._pixels + 4 * self.action_encoder.dim  # bytes per step, see encode
        with torch.random.fork_rng(devices=[]):  # nn's default init draws from the global generator
            torch.manual_seed(self.seed)
            self.members = nn.ModuleList(
                _Member(self.channels, self.height, self.width, self.action_encoder.dim, self.conv,
                        self.torso_features, self.hidden_sizes)
                for _ in range(self.n_members)
            )
        self.register_buffer("reward_scale", torch.tensor(1.0, dtype=torch.float32))

    # ------------------------------------------------------------------ features are step bytes

    def encode(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``obs (B, *obs_shape)`` uint8, ``actions`` -> ``(B, input_dim)`` uint8: each step's
        pixels, then its encoded action as float32 bytes (unpacked by :meth:`rewards_from_features`)."""
        if obs.shape[0] != actions.shape[0]:
            raise ValueError(f"obs has {obs.shape[0]} rows but actions has {actions.shape[0]}")
        batch = obs.shape[0]
        pixels = obs.reshape(batch, -1)
        if pixels.shape[1] != self._pixels:
            raise ValueError(f"observation batch has shape {tuple(obs.shape)}, expected (B, {', '.join(map(str, self.observation_space.shape))})")
        if pixels.dtype != torch.uint8:
            # Absorbing padding or a caller's float frames: values are pixels in 0..255 either way.
            pixels = pixels.round().clamp(0, 255).to(torch.uint8)
        action_bytes = self.action_encoder(actions).to(torch.float32).contiguous().view(torch.uint8)
        return torch.cat((pixels, action_bytes.reshape(batch, -1)), dim=1)

    def _unpack(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step bytes ``(B, input_dim)`` -> images ``(B, C, H, W)`` float in [0, 1], actions ``(B, a)``."""
        batch = features.shape[0]
        images = features[:, : self._pixels].to(torch.float32).div_(255.0)
        if self.channels_last:
            images = images.reshape(batch, self.height, self.width, self.channels).permute(0, 3, 1, 2)
        else:
            images = images.reshape(batch, self.channels, self.height, self.width)
        actions = features[:, self._pixels :].contiguous().view(torch.float32)
        return images, actions

    def rewards_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Raw per-step rewards ``(M, B)`` from step bytes ``(B, in)`` (every member reads the same
        rows) or ``(M, B, in)`` (one batch per member). Without a gradient, in chunks of images."""
        if features.dtype != torch.uint8:
            raise TypeError(f"CnnRewardEnsemble features are step bytes (uint8) from encode(), got {features.dtype}")
        shared = features.dim() == 2
        rows = features.shape[-2]
        chunk = rows if torch.is_grad_enabled() else self.chunk_rows
        out = []
        for m, member in enumerate(self.members):
            member_rows = features if shared else features[m]
            parts = [member(*self._unpack(member_rows[s : s + chunk])) for s in range(0, rows, max(chunk, 1))]
            out.append(torch.cat(parts) if parts else member_rows.new_zeros(0, dtype=torch.float32))
        return torch.stack(out)

    # --------------------------------------------------------------------------- numpy API

    def raw_features(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        obs, actions = self._checked(obs, actions)
        return self.encode(torch.as_tensor(obs), torch.as_tensor(actions)).numpy()

    def fit_input_normalization(self, obs: np.ndarray, actions: np.ndarray) -> None:
        """Nothing: pixels are scaled by a fixed 1/255 inside each member (see the module docstring)."""

    def set_input_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        raise NotImplementedError("CnnRewardEnsemble does not standardise its inputs; pixels are scaled by 1/255")

    @torch.inference_mode()
    def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(B,)`` float32: ensemble-mean raw reward / ``reward_scale`` (what the policy is trained on)."""
        o, a = self._tensors(obs, actions)
        raw = self.forward(o, a) if len(o) else torch.zeros(self.n_members, 0)
        return (raw.mean(0) / self.reward_scale).cpu().numpy().astype(np.float32)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, conv={self.conv}, torso_features={self.torso_features}"


class _ImageChecker:
    """``check`` for image batches: shape ``(B, *obs_shape)`` and values within 0..255."""

    def __init__(self, space: gym.spaces.Box) -> None:
        self.space = space
        self.shape = tuple(int(s) for s in space.shape)

    def as_batch(self, x: object) -> np.ndarray:
        return np.asarray(x)

    def check(self, x: np.ndarray) -> None:
        if x.ndim < 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"observation batch has shape {x.shape}, expected (B, {', '.join(map(str, self.shape))}) for {self.space!r}")
        if x.dtype != np.uint8 and x.size and (np.min(x) < 0 or np.max(x) > 255):
            raise ValueError(f"observation values must be pixels in 0..255, got {np.min(x)}..{np.max(x)}")
