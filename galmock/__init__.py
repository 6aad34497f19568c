"""galmock: upsample simulated galaxies into Gaia-like mock star catalogs with normalizing flows.

The package's layers and the data flow between stages are drawn in ``galmock/README.md``.
"""

from galmock.version import __version__

__all__ = ["__version__", "open_catalog"]


def __getattr__(name: str):
    if name == "open_catalog":
        # Imported here: on first use, so `import galmock` stays light (no Dask, no zarr).
        from galmock.store import open_catalog

        return open_catalog
    raise AttributeError(f"module 'galmock' has no attribute {name!r}")
