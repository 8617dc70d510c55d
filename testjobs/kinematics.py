"""Minimal Lorentz-vector arithmetic shared by the event generator and the payloads.

Components may be numpy or awkward arrays (numpy ufuncs dispatch to awkward), so
the same code serves the generator's flat arrays and the payloads' jagged ones.
Units are GeV; massless-limit conventions follow the usual collider coordinates
(pt, pseudorapidity eta, azimuth phi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or awkward.Array

# Particle masses and widths (GeV, PDG values).
MUON_MASS = 0.10566
B_QUARK_MASS = 4.8
Z_MASS, Z_WIDTH = 91.1876, 2.4952
W_MASS, W_WIDTH = 80.377, 2.085
TOP_MASS, TOP_WIDTH = 172.5, 1.42


@dataclass(frozen=True)
class FourVector:
    """Cartesian four-momentum (px, py, pz, E)."""

    px: Array
    py: Array
    pz: Array
    e: Array

    @classmethod
    def from_ptetaphim(cls, pt: Array, eta: Array, phi: Array, mass: Array) -> FourVector:
        px = pt * np.cos(phi)
        py = pt * np.sin(phi)
        pz = pt * np.sinh(eta)
        return cls(px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + mass**2))

    def __add__(self, other: FourVector) -> FourVector:
        return FourVector(self.px + other.px, self.py + other.py, self.pz + other.pz, self.e + other.e)

    @property
    def pt(self) -> Array:
        return np.hypot(self.px, self.py)

    @property
    def eta(self) -> Array:
        return np.arcsinh(self.pz / self.pt)

    @property
    def phi(self) -> Array:
        return np.arctan2(self.py, self.px)

    @property
    def mass(self) -> Array:
        """Invariant mass; tiny negative m^2 from rounding is clipped to zero."""
        m2 = self.e**2 - self.px**2 - self.py**2 - self.pz**2
        return np.sqrt(np.maximum(m2, 0.0))

    def boost(self, parent: FourVector) -> FourVector:
        """Boost this vector, given in the rest frame of `parent`, into the frame where `parent` is measured."""
        bx, by, bz = parent.px / parent.e, parent.py / parent.e, parent.pz / parent.e
        b2 = bx**2 + by**2 + bz**2
        gamma = 1.0 / np.sqrt(1.0 - b2)
        bp = bx * self.px + by * self.py + bz * self.pz
        # (gamma - 1) / b2 written in a form that stays finite as b2 -> 0.
        factor = gamma**2 / (gamma + 1.0) * bp + gamma * self.e
        return FourVector(
            self.px + factor * bx,
            self.py + factor * by,
            self.pz + factor * bz,
            gamma * (self.e + bp),
        )
