"""Teacher specs as ``train --teacher`` and ``bench --teachers`` take them, checked and built.

- a B-Pref preset with optional overrides: ``mistake``, ``stochastic:beta=0.5``
  (:func:`prefloop.teachers.parse_teacher_spec`);
- a simulated crowd: ``crowd:3xcareful@0.05,random,adversarial`` (:mod:`prefloop.teachers.crowd`);
- a rater's fitted model: ``fitted:PATH[,rater=NAME]`` (:mod:`prefloop.teachers.fitted`);
- ``human`` and ``recorded:DATASET_DIR`` are handled by the loop (no simulated teacher to build).
"""

from __future__ import annotations

import re

from prefloop.teachers.crowd import CROWD_PREFIX, make_crowd_teacher, parse_crowd_spec
from prefloop.teachers.fitted import FITTED_PREFIX, make_fitted_teacher
from prefloop.teachers.base import Teacher
from prefloop.teachers.simulated import TeacherConfigError, make_teacher
from prefloop.teachers.simulated import parse_teacher_spec as parse_preset_spec

__all__ = ["build_simulated_teacher", "folder_name", "parse_teacher_spec"]


def parse_teacher_spec(spec: str) -> tuple[str, dict[str, float]]:
    """``(teacher, params)`` for a :class:`~prefloop.training.config.TrainConfig`: a preset's name and its
    overrides, or a whole ``crowd:``/``fitted:`` spec with no params. The spec is checked (a fitted
    spec's file is read).

    Raises:
        TeacherConfigError: one line naming what is wrong.
    """
    spec = spec.strip()
    if spec.startswith(CROWD_PREFIX):
        parse_crowd_spec(spec)
        return spec, {}
    if spec.startswith(FITTED_PREFIX):
        make_fitted_teacher(spec)
        return spec, {}
    return parse_preset_spec(spec)


def build_simulated_teacher(teacher: str, params: dict[str, float], seed: int) -> Teacher:
    """The simulated teacher (or crowd) ``TrainConfig.teacher`` / ``teacher_params`` describe."""
    if teacher.startswith(CROWD_PREFIX):
        if params:
            raise TeacherConfigError(
                "a crowd takes its members' parameters in its spec (e.g. crowd:3xcareful@0.05,random), not teacher params"
            )
        return make_crowd_teacher(teacher, seed=seed)
    if teacher.startswith(FITTED_PREFIX):
        return make_fitted_teacher(teacher, seed=seed, **params)
    return make_teacher(teacher, seed=seed, **params)


def folder_name(spec: str) -> str:
    """A spec as part of a folder name: only letters, digits and ``._=@-`` (paths and commas become ``-``)."""
    return re.sub(r"[^A-Za-z0-9._=@-]+", "-", spec).strip("-")[:120]
