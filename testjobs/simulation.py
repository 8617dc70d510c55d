"""Toy collision-event simulation for the test-job input datasets.

Three processes are generated at truth level with real decay kinematics
(Breit-Wigner resonances, isotropic two-body decays boosted to the lab):

* ``zmumu``:    Z -> mu mu plus a few initial-state-radiation jets;
* ``ttbar``:    t tbar -> W b W b with W -> qq' / e nu / mu nu (hadronic taus count as qq');
* ``multijet``: QCD-like background: jets, soft non-isolated leptons, small MET.

A crude detector response (resolution smearing, acceptance cuts, b-tag scores,
jet masses, pt ordering) is then applied. Every random number is drawn from the
generator passed in, so the output is a pure function of its state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import awkward as ak
import numpy as np

from testjobs.kinematics import (
    B_QUARK_MASS,
    MUON_MASS,
    TOP_MASS,
    TOP_WIDTH,
    W_MASS,
    W_WIDTH,
    Z_MASS,
    Z_WIDTH,
    FourVector,
)

Columns = dict[str, object]
Mixture = Mapping[str, float]

# Background-dominated composition used for collision-data-like datasets.
DATA_MIXTURE: Mixture = {"multijet": 0.85, "zmumu": 0.10, "ttbar": 0.05}


def process_mixture(dataset_name: str) -> Mixture:
    """Process fractions for a dataset, inferred from the physics short name in its DID."""
    if "Zmumu" in dataset_name:
        return {"zmumu": 1.0}
    if "ttbar" in dataset_name:
        return {"ttbar": 1.0}
    return DATA_MIXTURE


def simulate(rng: np.random.Generator, n_events: int, mixture: Mixture) -> Columns:
    """Generate `n_events` reconstructed events; returns the columns to write (no run/event numbers)."""
    names = sorted(mixture)
    fractions = np.array([mixture[name] for name in names], dtype=float)
    labels = rng.choice(len(names), size=n_events, p=fractions / fractions.sum())
    parts = [_PROCESSES[name](rng, int(np.count_nonzero(labels == k))) for k, name in enumerate(names)]
    grouped = ak.concatenate(parts)  # events grouped by process, in label order
    by_process = np.argsort(labels, kind="stable")
    truth = grouped[np.argsort(by_process)]  # back to the sampled event order
    return _reconstruct(rng, truth)


# --- truth-level processes -------------------------------------------------------------


def _zmumu(rng: np.random.Generator, n: int) -> ak.Array:
    mass = _breit_wigner(rng, Z_MASS, Z_WIDTH, n, 50.0, 150.0)
    z = _resonance(rng, mass, pt=rng.exponential(10.0, n), phi=rng.uniform(-np.pi, np.pi, n), y_sigma=1.6)
    mu_minus, mu_plus = _two_body_decay(rng, z, MUON_MASS, MUON_MASS)
    muons = _stack(mu_minus, mu_plus)
    charge = np.broadcast_to([-1.0, 1.0], (n, 2))
    return _truth_event(
        muons=_from_vectors(muons, np.ones((n, 2), bool), charge=charge),
        electrons=_empty_leptons(n),
        jets=_radiation_jets(rng, rng.poisson(0.7, n)),
        met=_met_noise(rng, n, sigma=8.0),
    )


def _ttbar(rng: np.random.Generator, n: int) -> ak.Array:
    """Tops are at index 0 and antitops at index 1 of every (n, 2) array."""
    top_pt = rng.exponential(90.0, n)
    top_phi = rng.uniform(-np.pi, np.pi, n)
    pt = np.stack([top_pt, top_pt * rng.lognormal(0.0, 0.25, n)], axis=1)
    phi = np.stack([top_phi, top_phi + np.pi + rng.normal(0.0, 0.3, n)], axis=1)
    mass = _breit_wigner(rng, TOP_MASS, TOP_WIDTH, (n, 2), 150.0, 195.0)
    tops = _resonance(rng, mass, pt=pt, phi=phi, y_sigma=1.0)
    w_mass = _breit_wigner(rng, W_MASS, W_WIDTH, (n, 2), 65.0, 95.0)
    w_bosons, b_quarks = _two_body_decay(rng, tops, w_mass, B_QUARK_MASS)
    fermions, partners = _two_body_decay(rng, w_bosons, 0.0, 0.0)

    mode = rng.random((n, 2))
    is_muon, is_electron = mode < 0.108, (mode >= 0.108) & (mode < 0.216)
    leptonic = is_muon | is_electron
    hadronic = ~leptonic
    lepton_charge = np.broadcast_to([1.0, -1.0], (n, 2))  # W+ from t, W- from tbar

    quark_jets = _stack(b_quarks, fermions, partners)
    quark_mask = np.concatenate([np.ones((n, 2), bool), hadronic, hadronic], axis=1)
    is_b = np.concatenate([np.ones((n, 2), bool), np.zeros((n, 4), bool)], axis=1)
    hard_jets = _from_vectors(quark_jets, quark_mask, is_b=is_b)

    neutrino_x = np.where(leptonic, partners.px, 0.0).sum(axis=1)
    neutrino_y = np.where(leptonic, partners.py, 0.0).sum(axis=1)
    noise_x, noise_y = _met_noise(rng, n, sigma=10.0)
    return _truth_event(
        muons=_from_vectors(fermions, is_muon, charge=lepton_charge),
        electrons=_from_vectors(fermions, is_electron, charge=lepton_charge),
        jets=ak.concatenate([hard_jets, _radiation_jets(rng, rng.poisson(1.2, n))], axis=1),
        met=(neutrino_x + noise_x, neutrino_y + noise_y),
    )


def _multijet(rng: np.random.Generator, n: int) -> ak.Array:
    return _truth_event(
        muons=_soft_leptons(rng, rng.poisson(0.1, n), pt_min=4.0),
        electrons=_soft_leptons(rng, rng.poisson(0.1, n), pt_min=7.0),
        jets=_radiation_jets(rng, 1 + rng.poisson(2.0, n), pt_scale=30.0, b_fraction=0.03),
        met=_met_noise(rng, n, sigma=12.0),
    )


_PROCESSES: dict[str, Callable[[np.random.Generator, int], ak.Array]] = {
    "zmumu": _zmumu,
    "ttbar": _ttbar,
    "multijet": _multijet,
}


# --- truth-level building blocks -------------------------------------------------------


def _breit_wigner(rng: np.random.Generator, mass: float, width: float, size, low: float, high: float) -> np.ndarray:
    """Relativistic-enough Cauchy line shape, truncated to [low, high] by inverse-CDF sampling."""
    cdf_low, cdf_high = (np.arctan(2.0 * (x - mass) / width) / np.pi + 0.5 for x in (low, high))
    u = rng.uniform(cdf_low, cdf_high, size)
    return mass + 0.5 * width * np.tan(np.pi * (u - 0.5))


def _resonance(rng: np.random.Generator, mass: np.ndarray, pt: np.ndarray, phi: np.ndarray, y_sigma: float) -> FourVector:
    """Lab-frame four-momenta of produced resonances with the given pt and phi and Gaussian rapidity."""
    rapidity = rng.normal(0.0, y_sigma, np.shape(mass))
    mt = np.sqrt(mass**2 + pt**2)
    return FourVector(pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(rapidity), mt * np.cosh(rapidity))


def _two_body_decay(rng: np.random.Generator, parent: FourVector, m1, m2) -> tuple[FourVector, FourVector]:
    """Isotropic decay in the parent rest frame, boosted to the lab."""
    mass = parent.mass
    p = np.sqrt((mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)) / (2.0 * mass)
    cos_theta = rng.uniform(-1.0, 1.0, np.shape(mass))
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    phi = rng.uniform(-np.pi, np.pi, np.shape(mass))
    px, py, pz = p * sin_theta * np.cos(phi), p * sin_theta * np.sin(phi), p * cos_theta
    first = FourVector(px, py, pz, np.sqrt(p**2 + m1**2))
    second = FourVector(-px, -py, -pz, np.sqrt(p**2 + m2**2))
    return first.boost(parent), second.boost(parent)


def _stack(*vectors: FourVector) -> FourVector:
    """Concatenate per-event vectors of shape (n,) or (n, k) into one (n, K) set."""
    def column(name: str) -> np.ndarray:
        return np.concatenate([np.reshape(getattr(v, name), (len(v.e), -1)) for v in vectors], axis=1)

    return FourVector(column("px"), column("py"), column("pz"), column("e"))


def _collection(counts: np.ndarray, **flat: np.ndarray) -> ak.Array:
    """Jagged record array: `counts[i]` objects in event i, fields given as flat arrays."""
    return ak.unflatten(ak.zip(flat), counts)


def _from_vectors(vectors: FourVector, mask: np.ndarray, **extra: np.ndarray) -> ak.Array:
    """Objects from (n, k) four-vectors, keeping those where `mask` is true."""
    fields = {"pt": vectors.pt[mask], "eta": vectors.eta[mask], "phi": vectors.phi[mask]}
    fields.update({name: np.asarray(values)[mask] for name, values in extra.items()})
    return _collection(mask.sum(axis=1), **fields)


def _kinematics(rng: np.random.Generator, total: int, pt_min: float, pt_scale: float, eta_sigma: float) -> dict:
    return {
        "pt": pt_min + rng.exponential(pt_scale, total),
        "eta": rng.normal(0.0, eta_sigma, total),
        "phi": rng.uniform(-np.pi, np.pi, total),
    }


def _radiation_jets(
    rng: np.random.Generator, counts: np.ndarray, pt_scale: float = 15.0, b_fraction: float = 0.01
) -> ak.Array:
    total = int(counts.sum())
    fields = _kinematics(rng, total, pt_min=15.0, pt_scale=pt_scale, eta_sigma=2.0)
    return _collection(counts, **fields, is_b=rng.random(total) < b_fraction)


def _soft_leptons(rng: np.random.Generator, counts: np.ndarray, pt_min: float) -> ak.Array:
    total = int(counts.sum())
    fields = _kinematics(rng, total, pt_min=pt_min, pt_scale=8.0, eta_sigma=1.5)
    return _collection(counts, **fields, charge=rng.choice([-1.0, 1.0], total))


def _empty_leptons(n: int) -> ak.Array:
    empty = np.empty(0)
    return _collection(np.zeros(n, np.int64), pt=empty, eta=empty, phi=empty, charge=empty)


def _met_noise(rng: np.random.Generator, n: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0.0, sigma, n), rng.normal(0.0, sigma, n)


def _truth_event(muons: ak.Array, electrons: ak.Array, jets: ak.Array, met: tuple[np.ndarray, np.ndarray]) -> ak.Array:
    return ak.zip({"mu": muons, "el": electrons, "jet": jets, "met_x": met[0], "met_y": met[1]}, depth_limit=1)


# --- detector response -----------------------------------------------------------------


def _reconstruct(rng: np.random.Generator, truth: ak.Array) -> Columns:
    muons = _smear_and_select(rng, truth.mu, resolution=0.02, pt_min=5.0, eta_max=2.7)
    electrons = _smear_and_select(rng, truth.el, resolution=0.03, pt_min=7.0, eta_max=2.47)
    jets = _smear_and_select(rng, truth.jet, resolution=0.10, pt_min=20.0, eta_max=4.5)
    jet_mass = jets.pt * _jagged(rng.uniform(0.04, 0.12, _n_objects(jets)), jets)
    tag_score = ak.where(
        jets.is_b,
        _jagged(rng.beta(5.0, 1.0, _n_objects(jets)), jets),
        _jagged(rng.beta(1.0, 4.0, _n_objects(jets)), jets),
    )
    btag = ak.where(abs(jets.eta) < 2.5, tag_score, 0.0)  # no tracking, no tagging
    return {
        "mu": _output_leptons(muons),
        "el": _output_leptons(electrons),
        "jet": ak.zip({
            "pt": _f32(jets.pt), "eta": _f32(jets.eta), "phi": _f32(jets.phi),
            "m": _f32(jet_mass), "btag": _f32(btag),
        }),
        "met_pt": np.hypot(truth.met_x, truth.met_y).to_numpy().astype(np.float32),
        "met_phi": np.arctan2(truth.met_y, truth.met_x).to_numpy().astype(np.float32),
    }


def _smear_and_select(rng: np.random.Generator, objects: ak.Array, resolution: float, pt_min: float, eta_max: float) -> ak.Array:
    scale = _jagged(rng.normal(1.0, resolution, _n_objects(objects)), objects)
    smeared = ak.with_field(objects, objects.pt * scale, "pt")
    accepted = smeared[(smeared.pt > pt_min) & (abs(smeared.eta) < eta_max)]
    return accepted[ak.argsort(accepted.pt, axis=1, ascending=False)]


def _output_leptons(leptons: ak.Array) -> ak.Array:
    return ak.zip({
        "pt": _f32(leptons.pt), "eta": _f32(leptons.eta), "phi": _f32(leptons.phi),
        "charge": ak.values_astype(leptons.charge, np.int8),
    })


def _n_objects(objects: ak.Array) -> int:
    return int(ak.sum(ak.num(objects, axis=1)))


def _jagged(flat: np.ndarray, like: ak.Array) -> ak.Array:
    """Give flat per-object values the event structure of `like`."""
    return ak.unflatten(flat, ak.num(like, axis=1))


def _f32(values: ak.Array) -> ak.Array:
    return ak.values_astype(values, np.float32)
