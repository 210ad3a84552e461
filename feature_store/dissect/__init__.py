"""Dissection: reduce features, cut their dims into facets, fit the correlation-type codebook; and the
Teacher that turns a dissection store into per-batch targets for the trainer."""
from .config import DissectConfig
from .run import default_output, dissect
from .teacher import Teacher, TeacherTargets

__all__ = ["DissectConfig", "Teacher", "TeacherTargets", "default_output", "dissect"]
