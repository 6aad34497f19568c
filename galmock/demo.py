"""The built-in demo galaxy (``galaxy.source: demo``): a Milky-Way-like model with exact densities.

Five components (thin and thick disk, bulge, stellar halo and a cold Sgr-like satellite), and
optionally a sixth of far-flung particles at 0.3-20 Mpc (``far_field``, off by default), are
sampled as equal-mass star particles in the astropy Galactocentric frame (Sun at x = -8.122 kpc,
disk angular momentum along -z, so local disk stars move towards +y). Every component also knows
its exact, normalised 6-D phase-space density, so flows trained on the demo can be scored against
the truth: :meth:`DemoGalaxy.log_prob` is the mass-weighted mixture.

Example:
    >>> import numpy as np
    >>> from galmock.demo import DemoGalaxy, demo_particles
    >>> src = demo_particles(10_000, seed=1)
    >>> src.meta["counts"]["thin_disk"]
    6200
    >>> cols = src.columns
    >>> pos = np.column_stack([cols["x"], cols["y"], cols["z"]])
    >>> vel = np.column_stack([cols["vx"], cols["vy"], cols["vz"]])
    >>> logp = DemoGalaxy.from_fractions().log_prob(pos, vel)  # exact log density, (kpc km/s)^-3
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.special import logsumexp

from galmock.particles import SourceParticles

G_KPC_KMS2_MSUN = 4.30091e-6  # gravitational constant in kpc (km/s)^2 / Msun
R_SUN_KPC = 8.122  # astropy Galactocentric v4.0
TOTAL_MASS_MSUN = 5.5e10  # stellar mass of the demo galaxy
AGE_UNIVERSE_GYR = 13.8
COMPONENT_NAMES = ("thin_disk", "thick_disk", "bulge", "stellar_halo", "satellite", "far_field")
DEFAULT_FRACTIONS = {
    "thin_disk": 0.62,
    "thick_disk": 0.12,
    "bulge": 0.22,
    "stellar_halo": 0.02,
    "satellite": 0.02,
    # Off by default: particles at 0.3-20 Mpc, as zoom snapshots keep (a robustness test).
    "far_field": 0.0,
}
# Total potential for the rotation curve (stars + gas + dark matter, not the demo's stars alone):
# Miyamoto-Nagai disk + Hernquist bulge + NFW halo, tuned to v_c(R_sun) = 230 km/s with a curve
# flat to ~8% between 5 and 20 kpc (234, 230, 219, 214 km/s at 5, 8.1, 15, 20 kpc).
POTENTIAL = {
    "disk_mass_msun": 6.0e10,
    "disk_a_kpc": 3.0,
    "disk_b_kpc": 0.28,
    "bulge_mass_msun": 1.2e10,
    "bulge_a_kpc": 0.6,
    "halo_mass_msun": 5.65e11,  # NFW characteristic mass 4 pi rho_0 r_s^3
    "halo_rs_kpc": 16.0,
}


def miyamoto_nagai_potential(
    R: np.ndarray, z: np.ndarray, mass: float, a: float, b: float
) -> np.ndarray:
    """Phi = -G M / sqrt(R^2 + (a + sqrt(z^2 + b^2))^2), (km/s)^2."""
    return -G_KPC_KMS2_MSUN * mass / np.sqrt(R**2 + (a + np.sqrt(z**2 + b**2)) ** 2)


def hernquist_potential(r: np.ndarray, mass: float, a: float) -> np.ndarray:
    """Phi = -G M / (r + a), (km/s)^2."""
    return -G_KPC_KMS2_MSUN * mass / (np.asarray(r) + a)


def nfw_potential(r: np.ndarray, mass: float, rs: float) -> np.ndarray:
    """Phi = -G M_s ln(1 + r/r_s) / r with M_s = 4 pi rho_0 r_s^3, (km/s)^2."""
    r = np.maximum(np.asarray(r, dtype=np.float64), 1e-12 * rs)  # the r -> 0 limit is finite
    return -G_KPC_KMS2_MSUN * mass * np.log1p(r / rs) / r


def potential(R: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Total potential (km/s)^2 at cylindrical radius R and height z (kpc)."""
    p = POTENTIAL
    r = np.sqrt(np.asarray(R) ** 2 + np.asarray(z) ** 2)
    return (
        miyamoto_nagai_potential(R, z, p["disk_mass_msun"], p["disk_a_kpc"], p["disk_b_kpc"])
        + hernquist_potential(r, p["bulge_mass_msun"], p["bulge_a_kpc"])
        + nfw_potential(r, p["halo_mass_msun"], p["halo_rs_kpc"])
    )


def circular_velocity(R: np.ndarray | float) -> np.ndarray:
    """v_c(R) = sqrt(R dPhi/dR) in the midplane, km/s (analytic derivatives)."""
    p, G = POTENTIAL, G_KPC_KMS2_MSUN
    R = np.abs(np.asarray(R, dtype=np.float64))
    ab = p["disk_a_kpc"] + p["disk_b_kpc"]
    v2 = G * p["disk_mass_msun"] * R**2 / (R**2 + ab**2) ** 1.5
    v2 = v2 + G * p["bulge_mass_msun"] * R / (R + p["bulge_a_kpc"]) ** 2
    x = np.maximum(R, 1e-12) / p["halo_rs_kpc"]
    v2 = v2 + G * p["halo_mass_msun"] * (np.log1p(x) - x / (1 + x)) / np.maximum(R, 1e-12)
    return np.sqrt(v2)


# -- helpers --------------------------------------------------------------------------------


def _cos_sin_phi(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    R = np.hypot(pos[:, 0], pos[:, 1])
    safe = np.where(R > 0, R, 1.0)  # on the axis any azimuth will do (measure zero)
    return R, np.where(R > 0, pos[:, 0] / safe, 1.0), np.where(R > 0, pos[:, 1] / safe, 0.0)


def to_rotation_frame(pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
    """(v_R, v_rot, v_z) with v_rot = -v . phi_hat: positive for disk rotation (L_z < 0)."""
    _, c, s = _cos_sin_phi(pos)
    return np.column_stack(
        [vel[:, 0] * c + vel[:, 1] * s, vel[:, 0] * s - vel[:, 1] * c, vel[:, 2]]
    )


def from_rotation_frame(pos: np.ndarray, vloc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_rotation_frame`: the map is a reflection, its own inverse, and
    orthogonal, so densities carry over with |Jacobian| = 1."""
    _, c, s = _cos_sin_phi(pos)
    return np.column_stack(
        [vloc[:, 0] * c + vloc[:, 1] * s, vloc[:, 0] * s - vloc[:, 1] * c, vloc[:, 2]]
    )


def _isotropic(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors uniform on the sphere (Archimedes: cos theta uniform)."""
    cth = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    sth = np.sqrt(1.0 - cth**2)
    return np.column_stack([sth * np.cos(phi), sth * np.sin(phi), cth])


@dataclass(frozen=True)
class Chemistry:
    """Age ~ U(age_gyr); [Fe/H] = feh + feh_grad (R - 8 kpc) + feh_age age + N(0, feh_sigma);
    [O/Fe] = ofe + ofe_age age + ofe_feh [Fe/H] + N(0, ofe_sigma). Not part of log_prob."""

    age_gyr: tuple[float, float]
    feh: float
    feh_sigma: float
    ofe: float
    ofe_sigma: float
    feh_grad: float = 0.0
    feh_age: float = 0.0
    ofe_age: float = 0.0
    ofe_feh: float = 0.0

    def sample(self, pos: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        n = len(pos)
        age = rng.uniform(*self.age_gyr, n)
        R = np.hypot(pos[:, 0], pos[:, 1])
        feh = self.feh + self.feh_grad * (R - 8.0) + self.feh_age * age
        feh = feh + rng.normal(0.0, self.feh_sigma, n)
        ofe = self.ofe + self.ofe_age * age + self.ofe_feh * feh + rng.normal(0, self.ofe_sigma, n)
        return age, feh, ofe


class Component(Protocol):
    """What every demo component provides (densities are per unit mass, normalised over R^6)."""

    @property
    def name(self) -> str: ...
    @property
    def chemistry(self) -> Chemistry: ...

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...
    def log_density(self, pos: np.ndarray) -> np.ndarray: ...
    def log_prob(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray: ...


class _GaussianVelocities:
    """Positions from ``log_density``/``sample_positions``; velocities Gaussian with diagonal
    covariance in the rotation frame (v_R, v_rot, v_z), whose moments depend on position."""

    def sample_positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def log_density(self, pos: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def velocity_moments(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sigma), each (N, 3) in the rotation frame, km/s."""
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pos = self.sample_positions(n, rng)
        mean, sigma = self.velocity_moments(pos)
        vloc = mean + sigma * rng.standard_normal((n, 3))
        return pos, from_rotation_frame(pos, vloc)

    def log_prob(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        pos, vel = np.asarray(pos, dtype=np.float64), np.asarray(vel, dtype=np.float64)
        mean, sigma = self.velocity_moments(pos)
        t = (to_rotation_frame(pos, vel) - mean) / sigma
        log_v = -0.5 * (t**2).sum(axis=1) - np.log(sigma).sum(axis=1) - 1.5 * np.log(2 * np.pi)
        return self.log_density(pos) + log_v


@dataclass(frozen=True)
class ExponentialDisk(_GaussianVelocities):
    """rho ∝ exp(-R/R_d) sech²(z/(2 h_z)); sigma_i(R) = sigma_i(R_sun) exp(-(R - R_sun)/R_sigma);
    mean v_rot from the asymmetric-drift Jeans equation, clipped at 0."""

    name: str
    scale_length_kpc: float
    scale_height_kpc: float
    sigma_sun_kms: tuple[float, float, float]  # (sigma_R, sigma_phi, sigma_z) at R_sun
    r_sigma_kpc: float
    chemistry: Chemistry

    def sample_positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        R = rng.gamma(2.0, self.scale_length_kpc, n)  # p(R) ∝ R exp(-R/R_d) (area element)
        phi = rng.uniform(0.0, 2 * np.pi, n)
        # sech²(z/2h)/(4h) is the logistic density with scale h (= 2h artanh(2u - 1)).
        z = rng.logistic(0.0, self.scale_height_kpc, n)
        return np.column_stack([R * np.cos(phi), R * np.sin(phi), z])

    def log_density(self, pos: np.ndarray) -> np.ndarray:
        rd, h = self.scale_length_kpc, self.scale_height_kpc
        R = np.hypot(pos[:, 0], pos[:, 1])
        u = np.abs(pos[:, 2]) / (2 * h)
        log_sech2 = 2 * (np.log(2.0) - u - np.log1p(np.exp(-2 * u)))  # overflow-free
        # ∫ exp(-R/R_d) 2 pi R dR = 2 pi R_d², ∫ sech²(z/2h) dz = 4h.
        return -R / rd + log_sech2 - np.log(8 * np.pi * rd**2 * h)

    def sigma(self, R: np.ndarray) -> np.ndarray:
        """(N, 3) dispersions (sigma_R, sigma_phi, sigma_z), km/s."""
        scale = np.exp(-(np.asarray(R) - R_SUN_KPC) / self.r_sigma_kpc)
        return scale[:, None] * np.asarray(self.sigma_sun_kms)[None, :]

    def mean_vrot(self, R: np.ndarray) -> np.ndarray:
        """v_c² - v² = sigma_R² (sigma_phi²/sigma_R² - 1 + R/R_d + 2R/R_sigma)."""
        R = np.asarray(R, dtype=np.float64)
        s_r, s_phi, _ = self.sigma_sun_kms
        sig_r2 = (s_r * np.exp(-(R - R_SUN_KPC) / self.r_sigma_kpc)) ** 2
        drift = sig_r2 * ((s_phi / s_r) ** 2 - 1 + R / self.scale_length_kpc)
        drift = drift + sig_r2 * 2 * R / self.r_sigma_kpc  # -dln(sigma_R²)/dlnR
        return np.sqrt(np.maximum(circular_velocity(R) ** 2 - drift, 0.0))

    def velocity_moments(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        R = np.hypot(pos[:, 0], pos[:, 1])
        mean = np.zeros((len(R), 3))
        mean[:, 1] = self.mean_vrot(R)
        return mean, self.sigma(R)


@dataclass(frozen=True)
class HernquistSphere(_GaussianVelocities):
    """rho ∝ a / (r (r + a)^3) truncated at r_max (renormalised exactly by the enclosed fraction
    (r_max/(r_max + a))²: the r^-4 tail would otherwise put a quarter of a 17 kpc halo beyond
    100 kpc); isotropic Gaussian velocities around a slow rotation v_rot R / (R + r_rot)."""

    name: str
    scale_radius_kpc: float
    r_max_kpc: float
    sigma_kms: float
    chemistry: Chemistry
    v_rot_kms: float = 0.0
    r_rot_kpc: float = 1.0

    def enclosed_fraction(self, r: np.ndarray) -> np.ndarray:
        """Fraction of the (truncated) component's mass within radius r."""
        a, rmax = self.scale_radius_kpc, self.r_max_kpc
        r = np.minimum(np.asarray(r, dtype=np.float64), rmax)
        return (r / (r + a)) ** 2 / (rmax / (rmax + a)) ** 2

    def sample_positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        a, rmax = self.scale_radius_kpc, self.r_max_kpc
        s = np.sqrt(rng.uniform(0.0, (rmax / (rmax + a)) ** 2, n))  # s = r/(r + a), inverse CDF
        return (a * s / (1.0 - s))[:, None] * _isotropic(n, rng)

    def log_density(self, pos: np.ndarray) -> np.ndarray:
        a, rmax = self.scale_radius_kpc, self.r_max_kpc
        r = np.sqrt((pos**2).sum(axis=1))
        log_norm = 2 * np.log(rmax / (rmax + a))
        with np.errstate(divide="ignore"):
            out = np.log(a / (2 * np.pi)) - np.log(r) - 3 * np.log(r + a) - log_norm
        return np.where(r <= rmax, out, -np.inf)

    def velocity_moments(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        R = np.hypot(pos[:, 0], pos[:, 1])
        mean = np.zeros((len(R), 3))
        mean[:, 1] = self.v_rot_kms * R / (R + self.r_rot_kpc)
        return mean, np.full((len(R), 3), self.sigma_kms)


@dataclass(frozen=True)
class PlummerSatellite:
    """A Plummer sphere drawn from its isotropic self-consistent DF f(E) ∝ (-E)^{7/2}, moved to
    ``centre_kpc`` with bulk velocity ``velocity_kms``.

    ``dynamical_mass_msun`` sets the potential (hence the ~9 km/s internal dispersion) and is
    independent of the satellite's share of the demo's stellar mass: with a = 0.5 kpc, a
    self-gravitating 1.1e9 Msun would be ~30 km/s hot, not cold substructure.
    """

    name: str
    scale_radius_kpc: float
    dynamical_mass_msun: float
    centre_kpc: tuple[float, float, float]
    velocity_kms: tuple[float, float, float]
    chemistry: Chemistry

    def _gm(self) -> float:
        return G_KPC_KMS2_MSUN * self.dynamical_mass_msun

    def escape_speed(self, r: np.ndarray) -> np.ndarray:
        return np.sqrt(2 * self._gm() / np.sqrt(np.asarray(r) ** 2 + self.scale_radius_kpc**2))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        a = self.scale_radius_kpc
        u = rng.random(n)
        with np.errstate(divide="ignore"):
            r = a / np.sqrt(u ** (-2.0 / 3.0) - 1.0)  # inverse of M(<r)/M = r³/(r² + a²)^{3/2}
        # Aarseth, Hénon & Wielen (1974): q = v/v_esc has density ∝ q²(1 - q²)^{7/2}, i.e.
        # q² ~ Beta(3/2, 9/2), so no rejection loop is needed.
        q = np.sqrt(rng.beta(1.5, 4.5, n))
        pos = r[:, None] * _isotropic(n, rng) + np.asarray(self.centre_kpc)
        vel = (q * self.escape_speed(r))[:, None] * _isotropic(n, rng)
        return pos, vel + np.asarray(self.velocity_kms)

    def log_density(self, pos: np.ndarray) -> np.ndarray:
        a = self.scale_radius_kpc
        r2 = ((np.asarray(pos) - np.asarray(self.centre_kpc)) ** 2).sum(axis=1)
        return np.log(3 / (4 * np.pi * a**3)) - 2.5 * np.log1p(r2 / a**2)

    def log_prob(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        """log f per unit mass: f = 24√2/(7π³) a²/(G M)⁵ (-E)^{7/2} for E < 0, else 0."""
        a, gm = self.scale_radius_kpc, self._gm()
        r2 = ((np.asarray(pos) - np.asarray(self.centre_kpc)) ** 2).sum(axis=1)
        v2 = ((np.asarray(vel) - np.asarray(self.velocity_kms)) ** 2).sum(axis=1)
        binding = gm / np.sqrt(r2 + a**2) - 0.5 * v2  # -E
        log_c = math.log(24 * math.sqrt(2) / (7 * math.pi**3)) + 2 * math.log(a) - 5 * math.log(gm)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = log_c + 3.5 * np.log(binding)
        return np.where(binding > 0, out, -np.inf)


@dataclass(frozen=True)
class FarField(_GaussianVelocities):
    """Particles far outside the galaxy, as zoom snapshots keep (unbound, stripped and
    neighbouring-halo stars out to Mpc): isotropic and log-uniform in radius between
    ``r_min_kpc`` and ``r_max_kpc`` (rho ∝ r^-3), with isotropic Gaussian velocities at rest.
    A handful of them must not set any region's scale (#12)."""

    name: str
    r_min_kpc: float
    r_max_kpc: float
    sigma_kms: float
    chemistry: Chemistry

    def sample_positions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        r = np.exp(rng.uniform(np.log(self.r_min_kpc), np.log(self.r_max_kpc), n))
        return r[:, None] * _isotropic(n, rng)

    def log_density(self, pos: np.ndarray) -> np.ndarray:
        r = np.sqrt((np.asarray(pos, dtype=np.float64) ** 2).sum(axis=1))
        log_norm = np.log(4 * np.pi * np.log(self.r_max_kpc / self.r_min_kpc))
        with np.errstate(divide="ignore"):
            out = -3 * np.log(r) - log_norm
        return np.where((r >= self.r_min_kpc) & (r <= self.r_max_kpc), out, -np.inf)

    def velocity_moments(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(pos), 3)), np.full((len(pos), 3), self.sigma_kms)


def default_components() -> dict[str, Component]:
    """The demo's six components with their default parameters, in index order."""
    return {
        # Dispersions fall with R_sigma = 8 kpc (~3 R_d): the sigma ∝ exp(-R/2R_d) of a
        # constant-scale-height disk would make the inner disk hotter than the bulge.
        "thin_disk": ExponentialDisk(
            name="thin_disk",
            scale_length_kpc=2.6,
            scale_height_kpc=0.3,
            sigma_sun_kms=(35.0, 25.0, 20.0),
            r_sigma_kpc=8.0,
            chemistry=Chemistry(
                age_gyr=(0.0, 9.0),
                feh=0.0,
                feh_sigma=0.1,
                feh_grad=-0.06,
                feh_age=-0.03,
                ofe=0.0,
                ofe_sigma=0.03,
                ofe_age=0.01,
            ),
        ),
        "thick_disk": ExponentialDisk(
            name="thick_disk",
            scale_length_kpc=2.0,
            scale_height_kpc=0.9,
            sigma_sun_kms=(60.0, 45.0, 45.0),
            r_sigma_kpc=8.0,
            chemistry=Chemistry(
                age_gyr=(9.0, 11.0), feh=-0.6, feh_sigma=0.2, ofe=0.3, ofe_sigma=0.05
            ),
        ),
        "bulge": HernquistSphere(
            name="bulge",
            scale_radius_kpc=0.6,
            r_max_kpc=10.0,
            sigma_kms=100.0,
            v_rot_kms=50.0,
            r_rot_kpc=1.0,
            chemistry=Chemistry(
                age_gyr=(8.0, 12.0), feh=0.0, feh_sigma=0.4, ofe=0.15, ofe_sigma=0.05, ofe_feh=-0.2
            ),
        ),
        "stellar_halo": HernquistSphere(
            name="stellar_halo",
            scale_radius_kpc=17.0,
            r_max_kpc=100.0,
            sigma_kms=110.0,
            chemistry=Chemistry(
                age_gyr=(11.0, 13.0), feh=-1.5, feh_sigma=0.4, ofe=0.35, ofe_sigma=0.07
            ),
        ),
        "satellite": PlummerSatellite(
            name="satellite",
            scale_radius_kpc=0.5,
            dynamical_mass_msun=1.0e8,
            centre_kpc=(17.5, 2.5, -6.5),
            velocity_kms=(230.0, -35.0, 195.0),
            chemistry=Chemistry(
                age_gyr=(5.0, 10.0), feh=-0.9, feh_sigma=0.3, ofe=0.1, ofe_sigma=0.07
            ),
        ),
        "far_field": FarField(
            name="far_field",
            r_min_kpc=300.0,
            r_max_kpc=20_000.0,
            sigma_kms=100.0,
            chemistry=Chemistry(
                age_gyr=(10.0, 13.0), feh=-1.8, feh_sigma=0.4, ofe=0.3, ofe_sigma=0.07
            ),
        ),
    }


def normalise_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    """Mass fractions renormalised to sum to 1; names left out of ``fractions`` get 0."""
    raw = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    unknown = sorted(set(raw) - set(COMPONENT_NAMES))
    if unknown:
        raise ValueError(f"unknown demo component(s) {unknown}; known: {list(COMPONENT_NAMES)}")
    values = {name: float(raw.get(name, 0.0)) for name in COMPONENT_NAMES}
    if any(v < 0 or not math.isfinite(v) for v in values.values()) or sum(values.values()) <= 0:
        raise ValueError(f"demo component fractions must be >= 0 and not all 0, got {raw}")
    total = sum(values.values())
    return {name: v / total for name, v in values.items()}


def particle_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of n * fraction: deterministic, sums to n exactly."""
    names = list(fractions)
    exact = np.array([fractions[k] for k in names]) * n
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")  # ties go to the earlier component
    counts[order[: n - int(counts.sum())]] += 1
    return {k: int(c) for k, c in zip(names, counts, strict=True)}


@dataclass(frozen=True)
class DemoGalaxy:
    """The demo galaxy: components (index order) with mass fractions summing to 1."""

    components: tuple[Component, ...]
    fractions: tuple[float, ...]
    total_mass_msun: float = TOTAL_MASS_MSUN

    @classmethod
    def from_fractions(cls, fractions: Mapping[str, float] | None = None) -> DemoGalaxy:
        weights = normalise_fractions(fractions)
        comps = default_components()
        return cls(tuple(comps.values()), tuple(weights[name] for name in comps))

    def component(self, name: str) -> Component:
        return self.components[COMPONENT_NAMES.index(name)]

    def log_prob(self, pos: np.ndarray, vel: np.ndarray) -> np.ndarray:
        """Exact log mixture density in (kpc km/s)^-3; zero-fraction components drop out."""
        pos, vel = np.asarray(pos, dtype=np.float64), np.asarray(vel, dtype=np.float64)
        used = [(c, w) for c, w in zip(self.components, self.fractions, strict=True) if w > 0]
        terms = np.stack([c.log_prob(pos, vel) + np.log(w) for c, w in used])
        return logsumexp(terms, axis=0)


def _plain(value: Any) -> Any:
    """Dataclass parameters as JSON-friendly values (they go into the store's attributes)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return float(value) if isinstance(value, (float, np.floating)) else value


def demo_particles(
    n_particles: int, seed: int, fractions: Mapping[str, float] | None = None
) -> SourceParticles:
    """Sample the demo galaxy as ``n_particles`` equal-mass particles (galmock units).

    Each component draws from its own child of ``SeedSequence(seed)``, indexed by its fixed
    position in :data:`COMPONENT_NAMES`, so changing one fraction leaves the others' streams alone.
    """
    if n_particles <= 0:
        raise ValueError(f"n_particles must be positive, got {n_particles}")
    galaxy = DemoGalaxy.from_fractions(fractions)
    weights = dict(zip(COMPONENT_NAMES, galaxy.fractions, strict=True))
    counts = particle_counts(n_particles, weights)
    streams = np.random.SeedSequence(seed).spawn(len(COMPONENT_NAMES))
    parts: dict[str, list[np.ndarray]] = {f: [] for f in ("pos", "vel", "age", "feh", "ofe", "c")}
    for index, (name, comp) in enumerate(zip(COMPONENT_NAMES, galaxy.components, strict=True)):
        if counts[name] == 0:
            continue
        rng = np.random.default_rng(streams[index])
        pos, vel = comp.sample(counts[name], rng)
        age, feh, ofe = comp.chemistry.sample(pos, rng)
        index_col = np.full(counts[name], index, dtype=np.int8)
        new = {"pos": pos, "vel": vel, "age": age, "feh": feh, "ofe": ofe, "c": index_col}
        for key, arr in new.items():
            parts[key].append(arr)
    pos, vel = np.concatenate(parts["pos"]), np.concatenate(parts["vel"])
    particle_mass = galaxy.total_mass_msun / n_particles
    columns = {
        "x": pos[:, 0],
        "y": pos[:, 1],
        "z": pos[:, 2],
        "vx": vel[:, 0],
        "vy": vel[:, 1],
        "vz": vel[:, 2],
        "mass": np.full(n_particles, particle_mass),
        "age": np.clip(np.concatenate(parts["age"]), 0.0, AGE_UNIVERSE_GYR),
        "feh": np.concatenate(parts["feh"]),
        "ofe": np.concatenate(parts["ofe"]),
        "id": np.arange(n_particles, dtype=np.int64),
        "component": np.concatenate(parts["c"]),
    }
    meta = {
        "generator": "galmock.demo",
        "seed": int(seed),
        "n_particles": int(n_particles),
        "total_mass_msun": galaxy.total_mass_msun,
        "components": list(COMPONENT_NAMES),
        "fractions": weights,
        "counts": counts,
        "component_mass_msun": {k: c * particle_mass for k, c in counts.items()},
        "parameters": {
            **{c.name: _plain(dataclasses.asdict(c)) for c in galaxy.components},  # type: ignore[call-overload]
            "potential": dict(POTENTIAL),
            "r_sun_kpc": R_SUN_KPC,
        },
    }
    return SourceParticles(columns=columns, path="demo", labels={}, meta=meta)
