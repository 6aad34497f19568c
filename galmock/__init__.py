"""galmock: upsample simulated galaxies into Gaia-like mock star catalogs with normalizing flows."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("galmock")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "open_catalog"]


def __getattr__(name: str):  # lazy, so `import galmock` stays light
    if name == "open_catalog":
        from galmock.store import open_catalog

        return open_catalog
    raise AttributeError(f"module 'galmock' has no attribute {name!r}")
