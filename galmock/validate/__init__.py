"""Validation: does the mock catalog follow the simulation? (``galmock validate JOB``).

:func:`validate` runs the stage (:mod:`.stage`): the GalaxyFlow multi-model classifier test over
the upsamplers of :mod:`.upsamplers`, absolute tests on a known truth (:mod:`.truth`), linear
MMD (:mod:`.mmd`), seam diagnostics (:mod:`.seams`), figures (:mod:`.figures`) and
``<run>/report/`` (:mod:`.report`).

Example:
    >>> from galmock.validate import validate
    >>> report = validate(load_job("jobs/solar-sphere.yaml"))  # doctest: +SKIP
"""

from galmock.validate.stage import validate

__all__ = ["validate"]
