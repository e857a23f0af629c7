"""Sharing architectures: which layers the tasks share. Build one with ``ARCHITECTURES.build``.

One file per architecture (the paper in its docstring): ``hard`` (the default), ``branched``,
``cross_stitch``, ``mtan``, ``mmoe``, ``cgc`` / ``ple``, ``dselect_k``. The contract is
:class:`~core.architectures.base.Architecture`; see docs/architectures.md.
"""

# imported for their registrations
from . import branched, cross_stitch, dselect_k, hard, mmoe, mtan, ple  # noqa: F401
from .base import Architecture
from .groups import branched_from_groups
from .registry import ARCHITECTURES

#: log keys the architectures write (``gate/<task>/entropy``, ``gate/<task>/expert<i>``), for plots
DIAGNOSTIC_PREFIXES = ("gate/",)

__all__ = ["ARCHITECTURES", "DIAGNOSTIC_PREFIXES", "Architecture", "branched_from_groups"]
