"""Parallel back-ends.

:mod:`galmock.parallel.mpi` distributes regions over MPI ranks; :mod:`galmock.parallel.dask`
starts Dask clusters (local, Slurm, MPI).
"""
