"""Parallel back-ends: MPI region queues (:mod:`galmock.parallel.mpi`) and Dask clusters (:mod:`galmock.parallel.dask`)."""
