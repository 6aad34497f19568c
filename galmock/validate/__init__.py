"""Validation maths: does the mock catalog follow the simulation?

The ``validate`` stage (:mod:`galmock.stages.validate`) runs the GalaxyFlow multi-model
classifier test (:mod:`.classifier`) over the upsamplers of :mod:`.upsamplers` (galmock flows,
the EnBiD kernel baseline of :mod:`.enbid`, external catalogs), absolute tests on a known truth
(:mod:`.truth`), linear MMD (:mod:`.mmd`), seam diagnostics (:mod:`.seams`), figures
(:mod:`.figures`) and writes ``<run>/report/`` (:mod:`.report`). :mod:`.galaxy_model` is the
report of a conditional galaxy model (``galmock suite``).
"""
