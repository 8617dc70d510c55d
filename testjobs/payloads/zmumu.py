"""Z -> mu mu test payload: a light columnar di-muon analysis.

Selection: at least two muons with pt > 20 GeV and |eta| < 2.5 forming an
opposite-charge pair. The pair whose mass is closest to the Z mass is kept.
Histograms: di-muon mass (60-120 GeV), leading selected muon pt, missing ET.

Usage, report and exit codes: see `testjobs.payloads`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import awkward as ak
import numpy as np

from testjobs.kinematics import MUON_MASS, Z_MASS, FourVector
from testjobs.payloads.common import Histogram, run_payload

PT_MIN = 20.0
ETA_MAX = 2.5


class ZmumuAnalysis:
    branches = ("mu_pt", "mu_eta", "mu_phi", "mu_charge", "met_pt")

    def __init__(self) -> None:
        self.mass = Histogram(60, 60.0, 120.0)
        self.leading_pt = Histogram(50, 0.0, 200.0)
        self.met = Histogram(50, 0.0, 200.0)

    def process(self, events: ak.Array) -> int:
        muons = ak.zip({"pt": events.mu_pt, "eta": events.mu_eta, "phi": events.mu_phi, "charge": events.mu_charge})
        good = muons[(muons.pt > PT_MIN) & (abs(muons.eta) < ETA_MAX)]
        pairs = ak.combinations(good, 2, fields=["first", "second"])
        pairs = pairs[pairs.first.charge != pairs.second.charge]
        mass = (_four_vector(pairs.first) + _four_vector(pairs.second)).mass
        selected = ak.num(mass, axis=1) > 0

        best = ak.argmin(abs(mass[selected] - Z_MASS), axis=1, keepdims=True)
        self.mass.fill(mass[selected][best])
        self.leading_pt.fill(good.pt[selected][:, 0])
        self.met.fill(events.met_pt[selected])
        return int(np.count_nonzero(selected))

    def histograms(self) -> dict[str, Histogram]:
        return {"mumu_mass": self.mass, "mu_leading_pt": self.leading_pt, "met": self.met}


def _four_vector(muons: ak.Array) -> FourVector:
    return FourVector.from_ptetaphim(muons.pt, muons.eta, muons.phi, MUON_MASS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_payload(ZmumuAnalysis(), "zmumu", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
