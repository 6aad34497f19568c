"""galmock's version, from the installed package metadata (a source tree says so)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("galmock")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
