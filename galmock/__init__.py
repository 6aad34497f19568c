"""galmock: upsample simulated galaxies into Gaia-like mock star catalogs with normalizing flows."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("galmock")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
