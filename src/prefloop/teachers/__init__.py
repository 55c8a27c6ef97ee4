"""Teachers: who answers a pair of segments.

- :mod:`~prefloop.teachers.base`: the :class:`Teacher` protocol (answers when asked) and the
  :class:`StoreTeacher` protocol (answers through the store in its own time: people, clock raters).
- :mod:`~prefloop.teachers.simulated`: B-Pref's simulated teachers.
- :mod:`~prefloop.teachers.crowd`: a crowd of simulated raters with different reliabilities.
- :mod:`~prefloop.teachers.fitted`: teacher parameters fitted to a real rater's labels.
- :mod:`~prefloop.teachers.recorded`: the replay of an exported run's labels.
- :mod:`~prefloop.teachers.clock`: a simulated teacher answering through the store at human pace.
- :mod:`~prefloop.teachers.labeling`: a teacher answering the pairs the store holds.
- :mod:`~prefloop.teachers.specs`: ``--teacher`` strings to teacher objects.

Modules in this package import each other by their own names (``prefloop.teachers.simulated``),
never through this package, so that importing one teacher does not import them all.
"""

from prefloop.teachers.base import StoreTeacher, Teacher
from prefloop.teachers.simulated import (
    HUMAN_TEACHER,
    RECORDED_PREFIX,
    TEACHER_PRESETS,
    SimulatedTeacher,
    TeacherConfig,
    TeacherConfigError,
    make_teacher,
    parse_teacher_param,
    parse_teacher_spec,
    teacher_spec,
)

__all__ = [
    "HUMAN_TEACHER",
    "RECORDED_PREFIX",
    "TEACHER_PRESETS",
    "SimulatedTeacher",
    "StoreTeacher",
    "Teacher",
    "TeacherConfig",
    "TeacherConfigError",
    "make_teacher",
    "parse_teacher_param",
    "parse_teacher_spec",
    "teacher_spec",
]
