"""Validation of a conditional galaxy model (GalacticFlow, Wolf & Buck 2023, Figs. 2 and 3).

For every left-out galaxy L a galaxy is generated with L's parameters and as many stars as
the comparison uses; its linear MMD² (:mod:`galmock.validate.mmd`) to every suite galaxy D is
recorded against Δlog M* = log M*_L − log M*_D ("model" rows). The same is done for the true
L ("truth" rows, D ≠ L: the spread real galaxies show). A good model is close to L and
drifts away from it as |Δlog M*| grows, like the truth. All samples are z-scored with the
model's training statistics and share one Gaussian-kernel bandwidth (the median heuristic on
the pooled suite), so MMD values are comparable across pairs.

Outputs in the report directory: ``mmd.json`` (every pair with its standard error),
``mmd_vs_dlogm.png`` (Fig. 3) and ``corner-<name>.png`` per left-out galaxy (Fig. 2: data in
the lower triangle, model in the upper, marginals overlaid on the diagonal).

Example:
    >>> from galmock.flows.registry import load_galaxy_model
    >>> from galmock.suite import choose_leave_out, load_suite
    >>> job = load_job("jobs/galaxy-suite.yaml", output=tmp_path / "run")
    >>> galaxies = load_suite(job)  # 10 demo galaxies
    >>> choose_leave_out(galaxies, job.suite.leave_out)
    ['demo-03', 'demo-07']
    >>> run = RunLayout(job.run_dir)
    >>> model = load_galaxy_model(run.suite_model)  # trained by `galmock suite`  # doctest: +SKIP
    >>> rows, width, generated = mmd_rows(  # doctest: +SKIP
    ...     model, galaxies, ["demo-03"], rows=5000, seed=0)
    >>> write_report(  # doctest: +SKIP
    ...     model, galaxies, ["demo-03"], run.suite_report, job.suite.report, 0)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt
import numpy as np
import torch

from galmock.atomic import atomic_directory
from galmock.flows.galaxy_model import COLUMNS
from galmock.seeds import derive_seed
from galmock.validate.mmd import linear_mmd, median_bandwidth

LABELS = {
    "x": "x [kpc]", "y": "y [kpc]", "z": "z [kpc]", "vx": "vx [km/s]", "vy": "vy [km/s]",
    "vz": "vz [km/s]", "age": "age [Gyr]", "feh": "[Fe/H]", "ofe": "[O/Fe]",
}  # fmt: skip


def _take(stars: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(stars) <= rows:
        return stars
    return stars[np.sort(rng.choice(len(stars), rows, replace=False))]


def generate_like(model: Any, galaxy: Any, rows: int, seed: int) -> np.ndarray:
    """A generated galaxy with ``galaxy``'s parameters and min(rows, its size) stars."""
    n = min(rows, len(galaxy.stars))
    gen = torch.Generator().manual_seed(derive_seed(seed, "suite-report", galaxy.name))
    return model.sample(n, galaxy.parameters, generator=gen)


def mmd_rows(
    model: Any, galaxies: Sequence[Any], left_out: Sequence[str], rows: int, seed: int
) -> tuple[list[dict[str, Any]], float, dict[str, np.ndarray]]:
    """MMD² of each generated (and true) left-out galaxy against every suite galaxy.

    Returns the rows (dicts: kind, galaxy, against, dlogm, mmd2, stderr, pairs), the kernel
    bandwidth and the generated samples by name.
    """
    rng = np.random.default_rng(seed)
    z = {g.name: model.data_pre.forward(_take(g.stars, rows, rng)) for g in galaxies}
    pooled = np.concatenate([v[: max(2, 4000 // len(z))] for v in z.values()])
    width = median_bandwidth(pooled, pooled, seed=seed)
    by_name = {g.name: g for g in galaxies}
    out: list[dict[str, Any]] = []
    generated = {}
    for name in left_out:
        held = by_name[name]
        generated[name] = generate_like(model, held, rows, seed)
        zg = model.data_pre.forward(generated[name])
        for other in galaxies:
            dlogm = held.log_mass - other.log_mass
            pairs = [("model", zg)] + ([("truth", z[name])] if other.name != name else [])
            for kind, sample in pairs:
                r = linear_mmd(sample, z[other.name], bandwidth=width, seed=seed)
                out.append({"kind": kind, "galaxy": name, "against": other.name,
                            "dlogm": dlogm, **r.to_dict()})
    return out, width, generated


def plot_mmd(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """MMD² vs Δlog M*, model and truth, with 1σ error bars (the paper's Fig. 3)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for kind, colour in (("truth", "tab:blue"), ("model", "tab:orange")):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            ax.errorbar([r["dlogm"] for r in sel], [r["mmd2"] for r in sel],
                        yerr=[r["stderr"] for r in sel], fmt="o", ms=3, color=colour,
                        label={"model": "generated vs data", "truth": "true vs data"}[kind])
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(r"$\Delta \log_{10} M_*$ (left-out − data galaxy)")
    ax.set_ylabel("linear MMD²")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def corner_plot(data: np.ndarray, model: np.ndarray, columns: Sequence[str], path: Path,
                title: str = "") -> None:
    """Data (lower triangle, blue marginals) against model (upper, orange), shared ranges."""
    d = len(columns)
    lo = np.percentile(np.concatenate([data, model]), 0.5, axis=0)
    hi = np.percentile(np.concatenate([data, model]), 99.5, axis=0)
    hi = np.where(hi > lo, hi, lo + 1)
    fig, axes = plt.subplots(d, d, figsize=(1.5 * d, 1.5 * d))
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == j:
                bins = np.linspace(lo[i], hi[i], 40)
                ax.hist(data[:, i], bins, density=True, histtype="step", color="tab:blue")
                ax.hist(model[:, i], bins, density=True, histtype="step", color="tab:orange")
            else:
                # Lower triangle: data; upper: model with axes swapped, so both share a layout.
                sample, (a, b) = (data, (j, i)) if i > j else (model, (i, j))
                ax.hist2d(sample[:, a], sample[:, b], bins=30,
                          range=[[lo[a], hi[a]], [lo[b], hi[b]]], cmap="Greys" if i > j
                          else "Oranges")
            if i == d - 1:
                ax.set_xlabel(LABELS.get(columns[j], columns[j]), fontsize=7)
            if j == 0:
                ax.set_ylabel(LABELS.get(columns[i], columns[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summarise(rows: Sequence[dict[str, Any]], galaxies: Sequence[Any]) -> list[dict[str, Any]]:
    """Per left-out galaxy: MMD² of the generated galaxy to the true one and to the suite
    galaxy furthest in M*, and their difference in combined standard errors."""
    out = []
    for name in dict.fromkeys(r["galaxy"] for r in rows):
        mine = [r for r in rows if r["galaxy"] == name and r["kind"] == "model"]
        own = next(r for r in mine if r["against"] == name)
        far = max(mine, key=lambda r: (abs(r["dlogm"]), r["against"]))
        gap = far["mmd2"] - own["mmd2"]
        sigma = float(np.hypot(far["stderr"], own["stderr"]))
        out.append({"galaxy": name, "mmd2_true": own["mmd2"], "stderr_true": own["stderr"],
                    "furthest": far["against"], "dlogm_furthest": far["dlogm"],
                    "mmd2_furthest": far["mmd2"], "stderr_furthest": far["stderr"],
                    "separation_sigma": gap / sigma if sigma > 0 else float("inf")})
    return out


def write_report(model: Any, galaxies: Sequence[Any], left_out: Sequence[str],
                 directory: str | Path, cfg: Any, seed: int) -> Path:
    """MMD table and figures for the left-out galaxies into ``directory`` (replaced
    atomically); returns it."""
    rows, width, generated = mmd_rows(model, galaxies, left_out, cfg.mmd_rows, seed)
    by_name = {g.name: g for g in galaxies}
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        report = {
            "columns": list(COLUMNS),
            "bandwidth": width,
            "standardisation": model.data_pre.to_dict(),
            "left_out": list(left_out),
            "galaxies": [{"name": g.name, "log_mass": g.log_mass, **g.parameters}
                         for g in galaxies],
            "summary": summarise(rows, galaxies),
            "pairs": rows,
        }
        (tmp / "mmd.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        plot_mmd(rows, tmp / "mmd_vs_dlogm.png")
        rng = np.random.default_rng(seed)
        for name in left_out:
            data = _take(by_name[name].stars, cfg.corner_rows, rng)
            model_stars = generated[name][: cfg.corner_rows]
            corner_plot(data, model_stars, COLUMNS, tmp / f"corner-{name}.png",
                        f"{name}: data (lower) vs GalacticFlow (upper)")
    return directory
