"""The names of the test-time augmentation views, torch-free.

Config checks (``training.validate``) list them before torch loads; the views themselves are
defined under the same names in :mod:`derm_exp.inference.tta` (a test keeps the two equal).
"""

from __future__ import annotations

# The 8 symmetries of the square (dihedral group D4), then two small rotations.
VIEW_NAMES = (
    "identity",
    "hflip",
    "vflip",
    "rot180",
    "rot90",
    "rot270",
    "transpose",
    "transverse",
    "rotate_p15",
    "rotate_m15",
)
# Views that swap height and width: they need square inputs.
SQUARE_ONLY_VIEWS = frozenset({"rot90", "rot270", "transpose", "transverse"})
