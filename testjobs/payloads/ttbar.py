"""ttbar test payload: a heavier multi-jet analysis with combinatorics.

Selection: at least four jets with pt > 25 GeV and |eta| < 2.5, at least one of
them b-tagged (jet_btag > 0.7). Per selected event: HT (scalar sum of selected
jet pt) and the invariant mass of the three-jet combination with the highest
vector-sum pt (the hadronic-top candidate), computed over all jet triplets.
Histograms: HT, three-jet mass, jet and b-jet multiplicities.

Usage, report and exit codes: see `testjobs.payloads`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import awkward as ak
import numpy as np

from testjobs.kinematics import FourVector
from testjobs.payloads.common import Histogram, run_payload

PT_MIN = 25.0
ETA_MAX = 2.5
BTAG_CUT = 0.7
MIN_JETS = 4


class TtbarAnalysis:
    branches = ("jet_pt", "jet_eta", "jet_phi", "jet_m", "jet_btag")

    def __init__(self) -> None:
        self.ht = Histogram(60, 0.0, 1500.0)
        self.trijet_mass = Histogram(50, 0.0, 500.0)
        self.n_jets = Histogram(12, 3.5, 15.5)
        self.n_bjets = Histogram(6, 0.5, 6.5)

    def process(self, events: ak.Array) -> int:
        jets = ak.zip({
            "pt": events.jet_pt, "eta": events.jet_eta, "phi": events.jet_phi,
            "m": events.jet_m, "btag": events.jet_btag,
        })
        jets = jets[(jets.pt > PT_MIN) & (abs(jets.eta) < ETA_MAX)]
        n_bjets = ak.sum(jets.btag > BTAG_CUT, axis=1)
        selected = (ak.num(jets, axis=1) >= MIN_JETS) & (n_bjets >= 1)
        jets = jets[selected]

        triplets = ak.combinations(jets, 3, fields=["a", "b", "c"])
        trijet = _four_vector(triplets.a) + _four_vector(triplets.b) + _four_vector(triplets.c)
        hardest = ak.argmax(trijet.pt, axis=1, keepdims=True)
        self.trijet_mass.fill(trijet.mass[hardest])
        self.ht.fill(ak.sum(jets.pt, axis=1))
        self.n_jets.fill(ak.num(jets, axis=1))
        self.n_bjets.fill(n_bjets[selected])
        return int(np.count_nonzero(selected))

    def histograms(self) -> dict[str, Histogram]:
        return {"ht": self.ht, "trijet_mass": self.trijet_mass, "n_jets": self.n_jets, "n_bjets": self.n_bjets}


def _four_vector(jets: ak.Array) -> FourVector:
    return FourVector.from_ptetaphim(jets.pt, jets.eta, jets.phi, jets.m)


def main(argv: Sequence[str] | None = None) -> int:
    return run_payload(TtbarAnalysis(), "ttbar", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
