"""Build galmock/data/kurucz_gaia_dr3.npz, galmock's Gaia DR3 synthetic-photometry grid, from
dustapprox's Kurucz grid (``dustapprox/data/precomputed/grids/kurucz_gaiaedr3_small_a0_grid.csv``
in the dustapprox 0.2.0 wheel, BSD-3-Clause; ``pip download --no-deps dustapprox==0.2.0``).

Usage: python tools/build_photometry_grid.py CSV [OUT]

The CSV holds, per Kurucz ODFNEW/NOVER 2003 spectrum, 33 consecutive rows: for each of G, BP
and RP, ``mag0 = -2.5 log10`` of the band-averaged surface flux and the extinction ``Ax`` at
A0 = 0, 1, ..., 10 (Fitzpatrick 1999 curve, R_V = 3.1). Every node (Teff, log g, [Fe/H]) with
[Fe/H] > -4 has two spectra, undocumented; they differ like a 0.3 dex metallicity shift, as
Kurucz's alpha-enhanced ([alpha/Fe] = +0.4) models do against the solar-scaled ones
([M/H] ~ [Fe/H] + 0.29, Salaris et al. 1993). We keep the less blanketed spectrum (the bluer
BP - RP) at each node: the solar-scaled family, as MIST's abundances are. The two agree within
0.005 mag above 6000 K and differ by up to 0.3 mag in BP - RP at 3500 K.

The output is a regular grid over the nodes' Teff, log g and [Fe/H] values; cells without a
spectrum (hot stars at low log g, beyond the models' Eddington limit) take the nearest log g
that has one at the same Teff and [Fe/H] and are marked in ``filled``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

BANDS = ("GAIA_GAIA3.G", "GAIA_GAIA3.Gbp", "GAIA_GAIA3.Grp")
ROWS = 33  # rows per spectrum: 3 bands x 11 A0 values


def main(csv: str, out: str) -> None:
    d = pd.read_csv(csv)
    if len(d) % ROWS:
        raise SystemExit(f"{csv}: {len(d)} rows, not a multiple of {ROWS}")
    d["spectrum"] = np.arange(len(d)) // ROWS
    per = d.groupby("spectrum")[["teff", "logg", "feh"]].nunique()
    if (per.to_numpy() != 1).any():
        raise SystemExit(f"{csv}: a block of {ROWS} rows mixes spectra")
    a0 = np.sort(d["A0"].unique())
    zero = d[d["A0"] == 0].pivot_table(index="spectrum", columns="passband", values="mag0")
    nodes = d.groupby("spectrum")[["teff", "logg", "feh"]].first()
    nodes["bp_rp"] = zero[BANDS[1]] - zero[BANDS[2]]
    chosen = nodes.loc[nodes.groupby(["teff", "logg", "feh"])["bp_rp"].idxmin()]
    teff, logg, feh = (np.sort(chosen[c].unique()) for c in ("teff", "logg", "feh"))
    shape = (len(teff), len(logg), len(feh))
    mag0 = np.full((len(BANDS), *shape), np.nan)
    ax = np.full((len(BANDS), len(a0), *shape), np.nan)
    rows = d[d["spectrum"].isin(chosen.index)]
    it = np.searchsorted(teff, rows["teff"].to_numpy())
    ig = np.searchsorted(logg, rows["logg"].to_numpy())
    iz = np.searchsorted(feh, rows["feh"].to_numpy())
    ib = np.array([BANDS.index(p) for p in rows["passband"]])
    ia = np.searchsorted(a0, rows["A0"].to_numpy())
    mag0[ib, it, ig, iz] = rows["mag0"].to_numpy()
    ax[ib, ia, it, ig, iz] = rows["Ax"].to_numpy()
    filled = np.isnan(mag0[0])
    for i in range(len(teff)):
        for k in range(len(feh)):
            have = np.flatnonzero(~filled[i, :, k])
            if len(have) == 0:
                raise SystemExit(f"no spectrum at Teff {teff[i]}, [Fe/H] {feh[k]}")
            for j in np.flatnonzero(filled[i, :, k]):
                src = have[np.argmin(np.abs(have - j))]
                mag0[:, i, j, k] = mag0[:, i, src, k]
                ax[:, :, i, j, k] = ax[:, :, i, src, k]
    np.savez_compressed(out, teff=teff, logg=logg, feh=feh, a0=a0,
                        mag0=mag0.astype(np.float32), ax=ax.astype(np.float32), filled=filled,
                        bands=np.array(["G", "BP", "RP"]))
    print(f"{out}: {shape} nodes, {filled.sum()} filled, {Path(out).stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "galmock/data/kurucz_gaia_dr3.npz")
