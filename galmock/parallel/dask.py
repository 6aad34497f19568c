"""Dask clusters for a job: local processes, Slurm jobs (dask-jobqueue) or MPI ranks (dask-mpi).

``convert.cluster`` picks one:

- ``local``: a ``distributed.LocalCluster`` of ``n_workers`` processes, each with
  ``threads_per_worker`` threads and ``memory_per_worker`` memory;
- ``slurm``: a ``dask_jobqueue.SLURMCluster`` submitting ``n_workers`` single-worker jobs with
  the job's ``slurm`` section (partition, account, qos, time, setup lines, extra directives);
- ``mpi``: ``dask_mpi.initialize`` under ``mpiexec -n N`` (N >= 3): rank 0 runs the scheduler,
  rank 1 runs the caller's code as the client and ranks 2.. are workers. Only rank 1 returns
  from :func:`dask_client`; the others leave with ``SystemExit(0)`` once the client is done.

Example:
    >>> job = load_job("jobs/demo.yaml", output=tmp_path / "run")  # local: 2 worker processes
    >>> with dask_client(job) as client:  # starts a cluster  # doctest: +SKIP
    ...     futures = client.map(abs, [-3, 1, -2])
    ...     results = sorted(f.result() for f in track(futures, "work"))
    >>> results  # doctest: +SKIP
    [1, 2, 3]
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
from dask_jobqueue import SLURMCluster
from distributed import Client, Future, KilledWorker, LocalCluster, as_completed, wait
from tqdm import tqdm

from galmock.config import ConvertConfig, JobConfig
from galmock.errors import ConfigError
from galmock.layout import RunLayout

__all__ = [
    "WORKER_DASK_CONFIG",
    "WORKER_MALLOC",
    "dask_client",
    "local_cluster",
    "slurm_cluster",
    "track",
    "wait_all",
]

log = logging.getLogger("galmock.parallel")

#: glibc malloc settings of every worker process. Dask starts workers with
#: MALLOC_TRIM_THRESHOLD_=65536 (freed memory goes back to the OS at once), which also pins
#: glibc's mmap threshold at 128 KiB: every larger buffer (numpy arrays, zstd and Parquet
#: encoder buffers) is then a fresh mapping whose pages fault in one by one, and the HATS and
#: catalog writes ran ~2x slower in workers than in a plain process. Buffers up to 64 MiB come
#: from the heap again; Dask's trim threshold still hands the heap's free top back.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "67108864"}

#: Dask settings of every worker. A worker that reaches ``pause`` (80% of its memory limit)
#: stops running tasks until its memory falls, but when that memory is held (by a task's
#: leftovers, or a task still running) it never falls and the conversion waits forever
#: (dask/distributed#5235). Without pausing, a worker that keeps growing is terminated by its
#: nanny at 95% of the limit, the task is retried on another worker, and after
#: ``distributed.scheduler.allowed-failures`` deaths the client gets ``KilledWorker``, which
#: :func:`track` reports as a clear error.
WORKER_DASK_CONFIG = {"distributed.worker.memory.pause": False}


@contextmanager
def dask_client(job: JobConfig, log_dir: str | Path | None = None) -> Iterator[Client]:
    """A client on the cluster ``job.convert.cluster`` asks for, closed (with it) on exit.

    ``log_dir`` receives the Slurm workers' job logs (default ``<run>/logs/dask``).
    """
    cfg = job.convert
    if cfg.cluster == "mpi":
        with _mpi_client(cfg) as client:
            yield client
        return
    if cfg.cluster == "slurm":
        cluster: Any = slurm_cluster(job, log_dir or RunLayout(job.run_dir).dask_logs)
        cluster.scale(jobs=cfg.n_workers)
    else:
        cluster = local_cluster(cfg)
    with cluster, Client(cluster) as client:
        log.info("dask %s cluster: dashboard %s", cfg.cluster, client.dashboard_link)
        _wait_for_a_worker(client, cfg)
        yield client


def local_cluster(cfg: ConvertConfig) -> LocalCluster:
    """``n_workers`` worker processes on this machine (with :data:`WORKER_MALLOC`)."""
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", {})
    # Nannies hand the dask config they are created under to their worker processes.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {**environ, **WORKER_MALLOC},
                          **WORKER_DASK_CONFIG}):
        return LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            memory_limit=cfg.memory_per_worker,
            processes=True,
            host=cfg.scheduler_host,
            # A fixed port collides with any other dask on the node (login nodes, tests).
            dashboard_address=":0",
        )


def slurm_cluster(job: JobConfig, log_dir: str | Path) -> SLURMCluster:
    """A ``SLURMCluster`` of single-process workers, one Slurm job each (not yet scaled).

    Example:
        >>> job = load_job("jobs/demo.yaml",
        ...                overrides=["slurm.partition=cpu", "slurm.qos=normal"])
        >>> cluster = slurm_cluster(job, RunLayout(tmp_path / "run").dask_logs)
        >>> for line in cluster.job_script().splitlines():
        ...     if line.startswith("#SBATCH"):
        ...         print(line)
        #SBATCH -J galmock-demo-dask
        #SBATCH -e .../run/logs/dask/galmock-demo-dask-%J.err
        #SBATCH -o .../run/logs/dask/galmock-demo-dask-%J.out
        #SBATCH -p cpu
        #SBATCH -n 1
        #SBATCH --cpus-per-task=1
        #SBATCH --mem=4G
        #SBATCH -t 01:00:00
        #SBATCH --qos=normal
        >>> cluster.scale(jobs=job.convert.n_workers)  # sbatch: needs Slurm  # doctest: +SKIP
        >>> cluster.close()
    """
    cfg, slurm = job.convert, job.slurm
    directives = list(slurm.extra_directives)
    if slurm.qos:
        directives.append(f"--qos={slurm.qos}")
    scheduler_options: dict[str, Any] = {"dashboard_address": ":0"}
    if cfg.scheduler_host:
        scheduler_options["host"] = cfg.scheduler_host
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SLURMCluster(
        cores=cfg.threads_per_worker,
        processes=1,
        memory=cfg.memory_per_worker,
        queue=slurm.partition,
        account=slurm.account,
        walltime=slurm.time,
        job_name=f"galmock-{job.name}-dask",
        job_extra_directives=directives,
        job_script_prologue=[
            *(f"export {k}={v}" for k, v in WORKER_MALLOC.items()),
            *(f"export {_dask_environ_name(k)}={v}" for k, v in WORKER_DASK_CONFIG.items()),
            *slurm.setup,
        ],
        interface=cfg.interface,
        scheduler_options=scheduler_options,
        log_directory=str(log_dir),
        # Workers must run this interpreter (the venv galmock is installed in).
        python=sys.executable,
    )


@contextmanager
def _mpi_client(cfg: ConvertConfig) -> Iterator[Client]:
    try:
        # Imported here: importing mpi4py initialises MPI, which only cluster: mpi may do.
        import dask_mpi
        from mpi4py import MPI
    except ImportError as err:  # mpi4py without an MPI library fails here too
        raise ConfigError(f"convert.cluster = 'mpi' needs dask-mpi and mpi4py: {err}") from err
    size = MPI.COMM_WORLD.Get_size()
    if size < 3:
        raise ConfigError(
            f"convert.cluster = 'mpi' needs at least 3 MPI ranks (scheduler, client, worker), "
            f"got {size}; run under e.g. `mpiexec -n 4 galmock convert JOB`"
        )
    # exit=False: we stop the scheduler ourselves when the client is done, rather than from
    # an atexit hook that would outlive it; the other ranks then leave here. Each worker rank
    # runs a nanny (which spawns the worker process with WORKER_MALLOC and WORKER_DASK_CONFIG,
    # and terminates it at 95% of its memory limit) inside initialize.
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", {})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {**environ, **WORKER_MALLOC},
                          **WORKER_DASK_CONFIG}):
        is_client = dask_mpi.initialize(
            interface=cfg.interface,
            nthreads=cfg.threads_per_worker,
            memory_limit=cfg.memory_per_worker,
            dashboard=False,
            worker_class="distributed.Nanny",
            exit=False,
        )
    if not is_client:
        raise SystemExit(0)
    try:
        with Client() as client:
            _wait_for_a_worker(client, cfg)
            yield client
    finally:
        dask_mpi.send_close_signal()


def _wait_for_a_worker(client: Client, cfg: ConvertConfig) -> None:
    if cfg.worker_timeout_s is None:
        return  # tasks simply wait for workers, however long the queue takes
    try:
        client.wait_for_workers(1, timeout=cfg.worker_timeout_s)
    except TimeoutError as err:
        raise ConfigError(
            f"convert.worker_timeout_s = {cfg.worker_timeout_s}: no dask worker joined the "
            f"{cfg.cluster} cluster in time (for slurm, check squeue and the worker logs)"
        ) from err


def track(futures: Iterable[Future], desc: str) -> Iterator[Future]:
    """Yield futures as they finish, with a progress bar on stderr.

    A task whose workers all died running it (``KilledWorker``: most often a worker's nanny
    terminating it at 95% of its memory limit; also a lost node or a Slurm time limit) is a
    :class:`~galmock.errors.ConfigError` naming ``convert.memory_per_worker``, not a
    traceback.
    """
    futures = list(futures)
    bar = tqdm(total=len(futures), desc=desc, unit="task", mininterval=1.0, file=sys.stderr)
    with bar:
        for future in as_completed(futures):
            bar.update(1)
            if future.status == "error" and isinstance(future.exception(), KilledWorker):
                raise ConfigError(
                    f"{desc}: dask workers died {_allowed_failures() + 1} times running task "
                    f"{future.key!r}, most likely at their memory limit (a worker is terminated "
                    "at 95% of convert.memory_per_worker): raise convert.memory_per_worker and "
                    "run the stage again; the worker logs say why they died"
                ) from future.exception()
            yield future


def _allowed_failures() -> int:
    return int(dask.config.get("distributed.scheduler.allowed-failures"))


def _dask_environ_name(key: str) -> str:
    """The environment variable dask reads ``key`` from.

    Example:
        >>> _dask_environ_name("distributed.worker.memory.pause")
        'DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE'
    """
    return "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))


def wait_all(futures: Iterable[Future]) -> None:
    """Block until every future has finished, failed or been cancelled."""
    wait(list(futures))
