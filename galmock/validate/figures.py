"""The validation report's figures (PNG, matplotlib's Agg backend), after the GalaxyFlow paper.

Each function takes arrays and a path and writes one PNG: proper-motion histograms in the sky
window with the parent particles overlaid (paper Fig. 3), ICRS corner plots model vs particles
(Figs. 4-5), Galactocentric (vx, vy) maps (Fig. 1), classifier-output histograms with the test
particles overlaid (Fig. 6) and the seam diagnostics. No files are read here.

Example:
    >>> rng = np.random.default_rng(0)
    >>> parents_vel = rng.normal(0.0, 50.0, (500, 3)) + [0.0, 220.0, 0.0]
    >>> vel_cnf = rng.normal(0.0, 50.0, (5000, 3)) + [0.0, 220.0, 0.0]
    >>> vxvy_maps(tmp_path / "vxvy.png", {"cnf": vel_cnf}, parents_vel).name
    'vxvy.png'
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt
import numpy as np

ICRS_AXES = ("ra", "dec", "parallax", "pmra", "pmdec", "radial_velocity")
ICRS_LABELS = {
    "ra": "ra [deg]",
    "dec": "dec [deg]",
    "parallax": "parallax [mas]",
    "pmra": "pmra [mas/yr]",
    "pmdec": "pmdec [mas/yr]",
    "radial_velocity": "v_r [km/s]",
}
DPI = 80


def _save(fig: Any, path: str | Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def _limits(values: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return -1.0, 1.0
    a, b = np.percentile(finite, [lo, hi])
    return (float(a), float(b)) if b > a else (float(a) - 1, float(a) + 1)


def pm_histograms(
    path: str | Path,
    samples: Mapping[str, Mapping[str, np.ndarray]],
    parents: Mapping[str, np.ndarray],
    title: str,
) -> Path:
    """One (pmra, pmdec) 2-D histogram per upsampler, parent particles as dots (Fig. 3).
    ``samples``/``parents`` hold ICRS columns already cut to the sky window."""
    labels = list(samples)
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 4), squeeze=False)
    both = np.concatenate([parents["pmra"], *(s["pmra"] for s in samples.values())])
    both_dec = np.concatenate([parents["pmdec"], *(s["pmdec"] for s in samples.values())])
    rng = (_limits(both, 2, 98), _limits(both_dec, 2, 98))
    for ax, label in zip(axes[0], labels):
        s = samples[label]
        ax.hist2d(s["pmra"], s["pmdec"], bins=60, range=rng, cmap="viridis", cmin=1)
        ax.scatter(parents["pmra"], parents["pmdec"], s=4, c="tab:red", label="parent particles")
        ax.set_xlim(rng[0])
        ax.set_ylim(rng[1])
        ax.set_xlabel(ICRS_LABELS["pmra"])
        ax.set_ylabel(ICRS_LABELS["pmdec"])
        ax.set_title(f"{label} ({len(s['pmra'])} in window)")
        ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def corner_plot(
    path: str | Path, model: Mapping[str, np.ndarray], particles: Mapping[str, np.ndarray],
    label: str,
) -> Path:
    """ICRS corner plot: model histograms (filled) vs particles (step / contours), Figs. 4-5."""
    n = len(ICRS_AXES)
    fig, axes = plt.subplots(n, n, figsize=(2.2 * n, 2.2 * n))
    lims = {a: _limits(np.concatenate([model[a], particles[a]])) for a in ICRS_AXES}
    for i, a in enumerate(ICRS_AXES):
        for j, b in enumerate(ICRS_AXES):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                bins = np.linspace(*lims[a], 50)
                ax.hist(model[a], bins=bins, density=True, color="tab:orange", alpha=0.6,
                        label=label)
                ax.hist(particles[a], bins=bins, density=True, histtype="step", color="k",
                        label="particles")
                ax.set_yticks([])
            else:
                rng = (lims[b], lims[a])
                ax.hist2d(model[b], model[a], bins=40, range=rng, cmap="Oranges", cmin=1)
                h, xe, ye = np.histogram2d(particles[b], particles[a], bins=20, range=rng)
                if h.max() > 0:
                    levels = np.quantile(h[h > 0], [0.5, 0.9])
                    ax.contour(0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1]), h.T,
                               levels=np.unique(levels), colors="k", linewidths=0.7)
            if i == n - 1:
                ax.set_xlabel(ICRS_LABELS[b], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(ICRS_LABELS[a], fontsize=8)
            elif j > 0:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"ICRS corner plot: {label} (orange) vs particles (black)")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.06, top=0.95, wspace=0.08, hspace=0.08)
    return _save(fig, path)


def vxvy_maps(
    path: str | Path, samples: Mapping[str, np.ndarray], particles: np.ndarray
) -> Path:
    """Galactocentric (vx, vy) 2-D histograms, particles first then each upsampler (Fig. 1)."""
    panels = {"particles": particles, **samples}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    rng = (_limits(particles[:, 0]), _limits(particles[:, 1]))
    for ax, (label, vel) in zip(axes[0], panels.items()):
        ax.hist2d(vel[:, 0], vel[:, 1], bins=80, range=rng, cmap="viridis", cmin=1)
        ax.set_title(f"{label} ({len(vel)})")
        ax.set_xlabel("vx [km/s]")
        ax.set_ylabel("vy [km/s]")
    fig.tight_layout()
    return _save(fig, path)


def classifier_histograms(
    path: str | Path,
    labels: Sequence[str],
    validation: Mapping[str, np.ndarray],
    test: np.ndarray,
    title: str,
) -> Path:
    """Per class k: the histogram of p(k | x) for each upsampler's validation samples, and of
    the test particles as points with Poisson 1-sigma bars (Fig. 6). Arrays are (n, K) log p."""
    k_panels = labels if len(labels) > 2 else labels[:1]
    fig, axes = plt.subplots(1, len(k_panels), figsize=(5 * len(k_panels), 4), squeeze=False)
    bins = np.linspace(0, 1, 41)
    centres = 0.5 * (bins[1:] + bins[:-1])
    for ax, k_label in zip(axes[0], k_panels):
        k = list(labels).index(k_label)
        for label in labels:
            p = np.exp(validation[label][:, k])
            ax.hist(p, bins=bins, density=True, histtype="step", lw=1.5, label=label)
        counts, _ = np.histogram(np.exp(test[:, k]), bins=bins)
        norm = max(counts.sum(), 1) * (bins[1] - bins[0])
        ax.errorbar(centres, counts / norm, yerr=np.sqrt(counts) / norm, fmt="o", ms=3,
                    color="k", label="test particles")
        ax.set_xlabel(f"classifier output p({k_label} | x)")
        ax.set_ylabel("density")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def seam_figure(path: str | Path, rows: Sequence[Mapping[str, Any]], source: str) -> Path:
    """Per internal face: the seam, the star density's step log(rho_R/rho_L) minus a seamless
    reference's, with its standard error (0 = seamless), and, lighter, the comparison with the
    particles log(s_L/s_R) - log(p_L/p_R)."""
    fig, ax = plt.subplots(figsize=(max(5.5, 0.5 * len(rows) + 2), 3.5))
    x = np.arange(len(rows))
    seam = [(i, r) for i, r in enumerate(rows) if r.get("excess") is not None]
    ax.errorbar([i - 0.1 for i, _ in seam], [r["excess"] for _, r in seam],
                yerr=[r["excess_stderr"] for _, r in seam], fmt="o",
                label="seam: step of stars - step of reference")
    versus = [(i, r) for i, r in enumerate(rows) if r.get("stderr") is not None]
    ax.errorbar([i + 0.1 for i, _ in versus], [r["log_ratio_difference"] for _, r in versus],
                yerr=[r["stderr"] for _, r in versus], fmt="s", color="0.6", ms=3,
                label="vs particles")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(x, [f"{r['axis']}={r['value_kpc']:.2f}" for r in rows], rotation=60,
                  fontsize=7)
    ax.set_ylabel("log density ratio across the face")
    ax.legend(fontsize=7)
    ax.set_title(f"seams across internal region faces\n{textwrap.fill(source, 80)}", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def radial_profile_figure(path: str | Path, rows: Sequence[Mapping[str, Any]], source: str) -> Path:
    """Mass fraction per galactocentric shell: particles (points, Poisson bars) and stars
    (line) on top, their ratio below (1 = faithful), each at the median radius of the shell's
    particles."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.0, 5.0), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    mid = np.array([r["r_median_kpc"] for r in rows])  # merged shells can be wide and empty
    width = np.array([r["r_hi_kpc"] - r["r_lo_kpc"] for r in rows])
    particles = np.array([r["particle_fraction"] for r in rows]) / width
    stars = np.array([r["star_fraction"] for r in rows]) / width
    err = np.array([r["particle_stderr"] for r in rows]) / width
    top.errorbar(mid, particles, yerr=err, fmt="o", color="k", ms=3, label="particles (mass)")
    top.plot(mid, stars, "-", color="C1", label="stars (number)")
    top.set_yscale("log")
    top.set_ylabel("fraction per kpc")
    top.legend(fontsize=7)
    ratio = np.array([r["ratio"] for r in rows])
    ratio_err = np.array([r["ratio_stderr"] for r in rows])
    bottom.errorbar(mid, ratio, yerr=ratio_err, fmt="o", color="C1", ms=3)
    bottom.axhline(1.0, color="k", lw=0.8)
    bottom.set_xscale("log")
    bottom.set_ylim(0.0, 2.0)
    bottom.set_xlabel("galactocentric radius [kpc]")
    bottom.set_ylabel("stars / particles")
    top.set_title(f"radial profile\n{textwrap.fill(source, 80)}", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def hess_diagram(path: str | Path, bp_rp: np.ndarray, abs_g: np.ndarray, title: str) -> Path:
    """Hess diagram: star counts (log colour scale) in (BP − RP, G − 5 log10(d / 10 pc))."""
    fig, ax = plt.subplots(figsize=(5.0, 5.5))
    ok = np.isfinite(bp_rp) & np.isfinite(abs_g)
    if ok.any():
        h = ax.hist2d(bp_rp[ok], abs_g[ok], bins=(120, 140), range=((-0.6, 4.0), (-5.0, 16.0)),
                      cmin=1, norm=matplotlib.colors.LogNorm(vmin=1), cmap="viridis")
        fig.colorbar(h[3], ax=ax, label="stars per bin")
    else:
        ax.text(0.5, 0.5, "no stars", ha="center", transform=ax.transAxes)
    ax.invert_yaxis()
    ax.set_xlabel("BP - RP [mag]")
    ax.set_ylabel("G - 5 log10(d / 10 pc) [mag] (extincted)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def counts_per_g(path: str | Path, g: np.ndarray, limit: float | None, title: str) -> Path:
    """Stars per 0.25 mag bin of G (log scale), the magnitude limit marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    g = g[np.isfinite(g)]
    top = np.ceil(max(limit if limit is not None else 0.0, float(g.max()) if len(g) else 0.0))
    ax.hist(g, bins=np.arange(np.floor(min(float(g.min()), 4.0) if len(g) else 4.0), top + 0.25,
                              0.25), histtype="step", color="C0")
    if limit is not None:
        ax.axvline(limit, color="k", lw=0.8, ls="--", label=f"G = {limit:g}")
        ax.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("G [mag]")
    ax.set_ylabel("stars per 0.25 mag")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def errors_vs_g(path: str | Path, g: np.ndarray, errors: Mapping[str, np.ndarray],
                reference: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str) -> Path:
    """Each uncertainty against G: the catalog's stars (dots) over the reference curve
    (pygaia's model evaluated on a G grid, line), one panel per column."""
    names = list(errors)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        ok = np.isfinite(g) & np.isfinite(errors[name])
        ax.plot(g[ok], errors[name][ok], "o", ms=1.5, color="C0", alpha=0.3, rasterized=True,
                label="catalog")
        grid, curve = reference[name]
        ax.plot(grid, curve, "--", color="C3", lw=1.0, label="pygaia")
        ax.set_yscale("log")
        ax.set_xlabel("G [mag]")
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def sky_density(path: str | Path, counts: np.ndarray, pixel_of: Any, title: str) -> Path:
    """A HEALPix map of star counts per pixel (``counts``, nested, in Galactic coordinates) in
    Mollweide: every image point takes the value of the pixel ``pixel_of(l_deg, b_deg)`` it
    falls in, so the pixels are drawn as they are."""
    lon = np.linspace(-np.pi, np.pi, 721)
    lat = np.linspace(-np.pi / 2, np.pi / 2, 361)
    lon_c, lat_c = np.meshgrid(0.5 * (lon[1:] + lon[:-1]), 0.5 * (lat[1:] + lat[:-1]))
    # Galactic longitude increases to the left in sky maps.
    pix = pixel_of(np.degrees(-lon_c) % 360.0, np.degrees(lat_c))
    image = np.ma.masked_less_equal(counts[pix].astype(np.float64), 0)
    fig = plt.figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot(projection="mollweide")
    top = max(float(counts.max()) if len(counts) else 1.0, 2.0)  # an empty map draws blank
    mesh = ax.pcolormesh(lon, lat, image, norm=matplotlib.colors.LogNorm(vmin=1, vmax=top),
                         cmap="magma", shading="flat", rasterized=True)
    fig.colorbar(mesh, ax=ax, orientation="horizontal", fraction=0.05, pad=0.08,
                 label="stars per pixel")
    ax.set_xticks(np.radians([-120, -60, 0, 60, 120]), ["120", "60", "0", "300", "240"],
                  fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=8)
    return _save(fig, path)
