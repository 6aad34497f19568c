"""Tests for the demo galaxy: physics near the Sun, determinism, and exactness of log_prob.

Statistical tests use fixed seeds. Tolerances are k standard errors computed from the samples
(k = 4-5: a correct model fails with probability < 1e-4 at a random seed) and KS tests use a
p-value floor of 1e-3; with fixed seeds every result is reproducible.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import gammaln

from galmock.demo import (
    COMPONENT_NAMES,
    R_SUN_KPC,
    DemoGalaxy,
    ExponentialDisk,
    PlummerSatellite,
    circular_velocity,
    demo_particles,
    from_rotation_frame,
    particle_counts,
    potential,
    to_rotation_frame,
)
from galmock.particles import check_particles

N = 200_000
GALAXY = DemoGalaxy.from_fractions()
GAUSSIAN = ("thin_disk", "thick_disk", "bulge", "stellar_halo")


@pytest.fixture(scope="module")
def demo():
    src = demo_particles(N, seed=42)
    c = src.columns
    pos = np.column_stack([c["x"], c["y"], c["z"]])
    vel = np.column_stack([c["vx"], c["vy"], c["vz"]])
    return src, pos, vel, c["component"]


def _mask(comp, name):
    return comp == COMPONENT_NAMES.index(name)


def _local(pos, comp, names, dz=0.5):
    """Particles of the given components in the annulus 7.5 < R < 8.5 kpc, |z| < dz."""
    R = np.hypot(pos[:, 0], pos[:, 1])
    sel = np.isin(comp, [COMPONENT_NAMES.index(n) for n in names])
    return sel & (np.abs(R - 8.0) < 0.5) & (np.abs(pos[:, 2]) < dz)


# -- physics ---------------------------------------------------------------------------------


def test_rotation_curve():
    assert 200 < circular_velocity(R_SUN_KPC) < 250
    vc = circular_velocity(np.linspace(5, 20, 31))
    assert vc.max() / vc.min() < 1.15  # roughly flat
    # v_c² = R dPhi/dR from the potential, by central differences (truncation error ~1e-8).
    R, h = np.array([1.0, 5.0, R_SUN_KPC, 20.0]), 1e-4
    dphi = (potential(R + h, 0.0 * R) - potential(R - h, 0.0 * R)) / (2 * h)
    np.testing.assert_allclose(circular_velocity(R) ** 2, R * dphi, rtol=1e-6)


def test_local_thin_disk_rotation_and_sign(demo):
    _, pos, vel, comp = demo
    m = _local(pos, comp, ["thin_disk"])
    vrot = to_rotation_frame(pos[m], vel[m])[:, 1]
    assert m.sum() > 3000
    assert 200 < np.abs(vrot).mean() < 250
    # Near the Sun's position the disk moves towards +y (astropy convention), by > 10 s.e.
    R = np.hypot(pos[:, 0], pos[:, 1])
    near = np.isin(comp, [0, 1]) & (np.abs(pos[:, 0] + R_SUN_KPC) < 1) & (np.abs(pos[:, 1]) < 1)
    vy = vel[near, 1]
    assert vy.mean() > 10 * vy.std() / math.sqrt(len(vy)) and vy.mean() > 150
    disk = np.isin(comp, [0, 1])
    lz = pos[disk, 0] * vel[disk, 1] - pos[disk, 1] * vel[disk, 0]
    assert lz.sum() < 0 and (lz < 0).mean() > 0.9
    assert R[disk].min() >= 0


def test_local_dispersions(demo):
    _, pos, vel, comp = demo
    thin = to_rotation_frame(pos, vel)[_local(pos, comp, ["thin_disk"])]
    thick = to_rotation_frame(pos, vel)[_local(pos, comp, ["thick_disk"], dz=1.5)]
    s_thin, s_thick = thin.std(axis=0), thick.std(axis=0)
    assert 20 < s_thin[0] < 50 and 10 < s_thin[2] < 30
    assert s_thick[0] > s_thin[0] + 10 and s_thick[2] > s_thin[2] + 10
    # Asymmetric drift: the thick disk lags the thin disk.
    assert thick[:, 1].mean() < thin[:, 1].mean() - 10


def test_satellite_is_cold_and_concentrated(demo):
    src, pos, vel, comp = demo
    m = _mask(comp, "satellite")
    assert m.sum() == particle_counts(N, src.meta["fractions"])["satellite"] == 4000
    sat = GALAXY.component("satellite")
    d = np.linalg.norm(pos[m] - sat.centre_kpc, axis=1)
    # Plummer: half-mass radius 1.305 a = 0.65 kpc; 90% within 3.74 a = 1.9 kpc.
    assert np.median(d) < 1.0 and np.quantile(d, 0.9) < 2.5
    assert (vel[m].std(axis=0) < 25).all()
    np.testing.assert_allclose(vel[m].mean(axis=0), sat.velocity_kms, atol=2.0)


def test_columns_meta_and_chemistry(demo):
    src, pos, _, comp = demo
    cols = check_particles(src.columns, "demo")
    assert set(cols) == {
        "x",
        "y",
        "z",
        "vx",
        "vy",
        "vz",
        "mass",
        "age",
        "feh",
        "ofe",
        "id",
        "component",
    }
    assert cols["component"].dtype == np.int8 and cols["id"].dtype == np.int64
    assert np.ptp(cols["mass"]) == 0
    np.testing.assert_allclose(cols["mass"].sum(), 5.5e10, rtol=1e-12)
    assert 0 <= cols["age"].min() and cols["age"].max() <= 13.8
    meta = json.loads(json.dumps(src.meta))  # must be storable as Zarr attributes
    assert meta["components"] == list(COMPONENT_NAMES) and meta["seed"] == 42
    assert sum(meta["counts"].values()) == N
    np.testing.assert_allclose(sum(meta["component_mass_msun"].values()), 5.5e10, rtol=1e-12)
    present = [n for n in COMPONENT_NAMES if meta["counts"][n]]  # far_field is off by default
    feh = {n: cols["feh"][_mask(comp, n)].mean() for n in present}
    assert feh["stellar_halo"] < feh["satellite"] < feh["thick_disk"] < feh["thin_disk"]
    thin = _mask(comp, "thin_disk")
    slope = np.polyfit(np.hypot(pos[thin, 0], pos[thin, 1]), cols["feh"][thin], 1)[0]
    assert -0.08 < slope < -0.04  # the -0.06 dex/kpc gradient
    ofe = {n: cols["ofe"][_mask(comp, n)].mean() for n in present}
    assert ofe["thin_disk"] < 0.1 < ofe["thick_disk"] < ofe["stellar_halo"]


# -- determinism and counts -----------------------------------------------------------------


def test_determinism():
    a, b = demo_particles(5000, seed=7), demo_particles(5000, seed=7)
    c = demo_particles(5000, seed=8)
    for f in a.columns:
        np.testing.assert_array_equal(a.columns[f], b.columns[f])
    assert not np.array_equal(a.columns["x"], c.columns["x"])
    # Moving the satellite's mass to the halo leaves the other components' streams alone.
    frac = {"thin_disk": 0.62, "thick_disk": 0.12, "bulge": 0.22, "stellar_halo": 0.04}
    d = demo_particles(5000, seed=7, fractions=frac)
    assert not np.any(d.columns["component"] == COMPONENT_NAMES.index("satellite"))
    for name in ("thin_disk", "thick_disk", "bulge"):
        ma, md = _mask(a.columns["component"], name), _mask(d.columns["component"], name)
        np.testing.assert_array_equal(a.columns["vx"][ma], d.columns["vx"][md])


def test_counts_largest_remainder():
    assert particle_counts(7, {"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 4, "b": 2, "c": 1}
    for n in (1, 3, 999, 12345):
        counts = demo_particles(n, seed=0).meta["counts"]
        assert sum(counts.values()) == n
    fr = GALAXY.fractions
    assert math.isclose(sum(fr), 1.0) and fr[0] == pytest.approx(0.62)
    with pytest.raises(ValueError, match="unknown"):
        demo_particles(10, seed=0, fractions={"bar": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        demo_particles(10, seed=0, fractions={"thin_disk": 0.0})


def test_mixture_log_prob(demo):
    _, pos, vel, _ = demo
    pos, vel = pos[::500], vel[::500]
    direct = np.log(
        sum(w * np.exp(c.log_prob(pos, vel)) for c, w in zip(GALAXY.components, GALAXY.fractions))
    )
    lp = GALAXY.log_prob(pos, vel)
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(lp, direct, rtol=1e-10)
    only = DemoGalaxy.from_fractions({"thin_disk": 2.0})
    np.testing.assert_allclose(
        only.log_prob(pos, vel), GALAXY.component("thin_disk").log_prob(pos, vel)
    )


# -- exactness of the densities ---------------------------------------------------------------


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_position_density_normalised(name):
    comp = GALAXY.component(name)

    def dens(*xyz):
        return float(np.exp(comp.log_density(np.array([xyz], dtype=np.float64)))[0])

    if isinstance(comp, ExponentialDisk):
        total, _ = integrate.dblquad(
            lambda z, R: 2 * np.pi * R * dens(R, 0.0, z), 0, np.inf, -np.inf, np.inf
        )
    else:
        c = np.asarray(getattr(comp, "centre_kpc", (0.0, 0.0, 0.0)))
        rmin, rmax = getattr(comp, "r_min_kpc", 0.0), getattr(comp, "r_max_kpc", np.inf)
        total, _ = integrate.quad(
            lambda r: 4 * np.pi * r**2 * dens(c[0] + r, c[1], c[2]), rmin, rmax, limit=200
        )
    assert total == pytest.approx(1.0, abs=1e-6)


def _cdf_from_density(density, grid):
    """CDF by integrating a 1-D density tabulated on a fine grid (trapezoid error ~1e-7 here)."""
    cdf = integrate.cumulative_trapezoid(density, grid, initial=0.0)
    return lambda r: np.interp(r, grid, cdf)


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_sampled_positions_follow_log_density(name):
    """KS tests of sampled radii (and |z| for disks) against CDFs integrated from log_density."""
    comp = GALAXY.component(name)
    pos, _ = comp.sample(20_000, np.random.default_rng(3))
    if isinstance(comp, ExponentialDisk):
        grid = np.concatenate([[0.0], np.geomspace(1e-4, 60, 20_000)])
        # Separable density: p(R, z) = p(R, 0) p(0, z) / p(0, 0).
        p0 = np.exp(comp.log_density(np.zeros((1, 3))))[0]

        def along(axis):
            pts = np.zeros((len(grid), 3))
            pts[:, axis] = grid
            return np.exp(comp.log_density(pts))

        a_r, b_z = along(0), along(2)  # p(R, 0), p(0, z) on the grid
        z_int = 2 * np.trapezoid(b_z, grid) / p0  # ∫ p(0, z) dz / p(0, 0)
        r_int = np.trapezoid(2 * np.pi * grid * a_r, grid) / p0  # ∫ p(R, 0) 2 pi R dR / p(0, 0)
        cdf_r = _cdf_from_density(2 * np.pi * grid * a_r * z_int, grid)
        cdf_z = _cdf_from_density(2 * b_z * r_int, grid)
        assert cdf_z(60.0) == pytest.approx(1.0, abs=1e-4)
        assert cdf_r(60.0) == pytest.approx(1.0, abs=1e-4)
        assert stats.kstest(np.hypot(pos[:, 0], pos[:, 1]), cdf_r).pvalue > 1e-3
        assert stats.kstest(np.abs(pos[:, 2]), cdf_z).pvalue > 1e-3
        return
    centre = np.asarray(getattr(comp, "centre_kpc", (0.0, 0.0, 0.0)))
    rmax = getattr(comp, "r_max_kpc", 200.0)
    grid = np.concatenate([[0.0], np.geomspace(1e-5, rmax, 40_000)])
    if hasattr(comp, "r_min_kpc"):  # no mass inside r_min: start the grid there
        grid = np.geomspace(comp.r_min_kpc, rmax, 40_000)
    pts = centre + np.outer(grid, [1.0, 0.0, 0.0])
    with np.errstate(invalid="ignore"):  # Hernquist cusp: r² p(r) -> 0 x inf at r = 0
        shell = np.nan_to_num(4 * np.pi * grid**2 * np.exp(comp.log_density(pts)))
    cdf = _cdf_from_density(shell, grid)
    assert cdf(rmax) == pytest.approx(1.0, abs=1e-4)
    r = np.linalg.norm(pos - centre, axis=1)
    assert stats.kstest(r, cdf).pvalue > 1e-3
    # Isotropy: cos(theta) uniform on [-1, 1].
    assert stats.kstest((pos - centre)[:, 2] / r, stats.uniform(-1, 2).cdf).pvalue > 1e-3


def _student_t_logpdf(x, scale, df=5.0):
    """Isotropic 3-D Student-t log density (heavier tails than any Gaussian: bounded p/q)."""
    d2 = (x**2).sum(axis=1) / scale**2
    return (
        gammaln((df + 3) / 2) - gammaln(df / 2) - 1.5 * np.log(df * np.pi) - 3 * np.log(scale)
        - (df + 3) / 2 * np.log1p(d2 / df)
    )  # fmt: skip


@pytest.mark.parametrize("name", GAUSSIAN)
def test_log_prob_normalised_importance_sampling(name):
    """E_q[p/q] = 1 over R^6: q = (positions from the sampler, density exp(log_density), checked
    above) x (3-D Student-t around the mean velocity, scale 1.5 x the largest dispersion)."""
    comp = GALAXY.component(name)
    rng = np.random.default_rng(11)
    n = 50_000
    pos, _ = comp.sample(n, rng)
    mean, sigma = comp.velocity_moments(pos)
    scale = 1.5 * sigma.max(axis=1)
    t = rng.standard_normal((n, 3)) / np.sqrt(rng.chisquare(5.0, n) / 5.0)[:, None]
    vel = from_rotation_frame(pos, mean) + scale[:, None] * t
    log_q = comp.log_density(pos) + _student_t_logpdf(t * scale[:, None], scale)
    w = np.exp(comp.log_prob(pos, vel) - log_q)
    se = w.std() / math.sqrt(n)
    assert se < 0.02  # the check has power
    assert abs(w.mean() - 1) < 4 * se


@pytest.mark.parametrize("name", GAUSSIAN)
def test_sampled_velocities_follow_log_prob(name):
    """Reverse importance sampling over the sampler's own draws: E_p[q/p] = 1 only if the
    sampled density equals exp(log_prob). q narrows the velocity ellipsoid to 0.7 sigma, so
    q/p <= 0.7^-3 is bounded; a frame or sign error makes the mean collapse towards 0."""
    comp = GALAXY.component(name)
    n = 50_000
    pos, vel = comp.sample(n, np.random.default_rng(5))
    mean, sigma = comp.velocity_moments(pos)
    u = (to_rotation_frame(pos, vel) - mean) / (0.7 * sigma)
    log_q = comp.log_density(pos) + (
        -0.5 * (u**2).sum(axis=1) - np.log(0.7 * sigma).sum(axis=1) - 1.5 * np.log(2 * np.pi)
    )
    w = np.exp(log_q - comp.log_prob(pos, vel))
    se = w.std() / math.sqrt(n)
    assert se < 0.02
    assert abs(w.mean() - 1) < 4 * se


def test_plummer_df_normalisation():
    """∫ 4 pi v² f(r, v) dv over 0 <= v < v_esc equals the normalised density rho(r)/M."""
    sat: PlummerSatellite = GALAXY.component("satellite")  # type: ignore[assignment]
    centre, bulk = np.asarray(sat.centre_kpc), np.asarray(sat.velocity_kms)
    for r in (0.0, 0.2, 0.5, 1.5, 5.0):
        x = (centre + np.array([0.0, 0.0, r]))[None, :]
        vesc = float(sat.escape_speed(r))

        def integrand(v, x=x):
            return (
                4
                * np.pi
                * v**2
                * np.exp(sat.log_prob(x, (bulk + np.array([v, 0.0, 0.0]))[None, :]))[0]
            )

        total, _ = integrate.quad(integrand, 0, vesc, epsabs=0, epsrel=1e-10)
        assert total == pytest.approx(np.exp(sat.log_density(x))[0], rel=1e-7)
        assert np.exp(sat.log_prob(x, (bulk + np.array([1.001 * vesc, 0, 0]))[None, :]))[0] == 0
    a = sat.scale_radius_kpc
    assert np.exp(sat.log_density(centre[None, :]))[0] == pytest.approx(3 / (4 * np.pi * a**3))


def test_plummer_speeds_follow_log_prob():
    """v/v_esc of the sampled stars against the speed CDF integrated from log_prob at r = a
    (for a Plummer sphere it does not depend on r), plus isotropy of the velocities."""
    sat: PlummerSatellite = GALAXY.component("satellite")  # type: ignore[assignment]
    pos, vel = sat.sample(20_000, np.random.default_rng(9))
    r = np.linalg.norm(pos - sat.centre_kpc, axis=1)
    dv = vel - sat.velocity_kms
    q = np.linalg.norm(dv, axis=1) / sat.escape_speed(r)
    x = (np.asarray(sat.centre_kpc) + np.array([sat.scale_radius_kpc, 0, 0]))[None, :]
    vesc = float(sat.escape_speed(sat.scale_radius_kpc))
    grid = np.linspace(0, 1, 4001)
    vels = np.asarray(sat.velocity_kms) + np.outer(grid * vesc, [0.0, 1.0, 0.0])
    f = np.exp(sat.log_prob(np.repeat(x, len(grid), axis=0), vels))
    cdf = integrate.cumulative_trapezoid(4 * np.pi * (grid * vesc) ** 2 * f, grid * vesc, initial=0)
    cdf /= cdf[-1]
    assert stats.kstest(q, lambda s: np.interp(s, grid, cdf)).pvalue > 1e-3
    assert (
        stats.kstest(dv[:, 0] / np.linalg.norm(dv, axis=1), stats.uniform(-1, 2).cdf).pvalue > 1e-3
    )
    # Internal 1-D dispersion: mass-weighted sigma² = pi G M / (32 a) for a Plummer sphere.
    sigma = math.sqrt(math.pi * 4.30091e-6 * sat.dynamical_mass_msun / (32 * sat.scale_radius_kpc))
    assert dv.std() == pytest.approx(sigma, rel=0.03)  # s.e. of a std ~ 1/sqrt(2 n) << 3%


@pytest.mark.slow
def test_million_particles_fast():
    start = time.perf_counter()
    src = demo_particles(1_000_000, seed=1)
    elapsed = time.perf_counter() - start
    assert len(src.columns["x"]) == 1_000_000
    assert elapsed < 60, f"10^6 demo particles took {elapsed:.1f} s"
