"""Batches on a Dask cluster: a running scheduler (`--scheduler`) or one that dask-jobqueue
starts on a batch system (`--cluster slurm|pbs|sge|lsf|local`).

Dask distributed does the scheduling, the retries on other workers when one dies, and the
bookkeeping of which worker died how often; this module only turns its futures into MIMIR's
`Outcome`s, so that one bad exam, or one exam that kills every worker it lands on, never stops
a batch. Inputs and outputs must live on storage every worker sees (a shared file system): a
worker that cannot read an input reports it as that item's failure, as a local run does.

distributed and dask-jobqueue are an optional extra (`pip install -e '.[dask]'`); nothing here
imports them before a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mimir.errors import MimirError
from mimir.parallel import WORKER_DIED, Executor, Outcome, run_one

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: The pip command that installs what a cluster needs.
DASK_EXTRA = "pip install -e '.[dask]'"

#: Batch systems dask-jobqueue drives, by `--cluster` name; "local" is distributed's LocalCluster.
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
CLUSTER_KINDS = (*JOBQUEUE_CLUSTERS, "local")

#: Items submitted to the scheduler at once: enough to keep a large cluster busy, few enough that
#: a batch of 150,000 exams is not held as futures all at once.
MAX_PENDING = 2000


class DaskMissingError(MimirError, ImportError):
    """A cluster was asked for, but distributed / dask-jobqueue are not installed."""


class ClusterError(MimirError, RuntimeError):
    """The scheduler cannot be reached, or the cluster cannot be started."""


@dataclass(frozen=True)
class ClusterRequest:
    """A cluster for dask-jobqueue to start. Fields left None keep the value of Dask's own
    configuration (`~/.config/dask/jobqueue.yaml`), which users of a site already keep."""

    kind: str
    jobs: int = 1
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    job_extra: tuple[str, ...] = ()
    #: The address the scheduler listens on; None lets Dask's configuration decide (the compute
    #: nodes must reach it). Tests bind 127.0.0.1.
    host: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in CLUSTER_KINDS:
            raise ClusterError(f"unknown cluster {self.kind!r}; choose one of {', '.join(CLUSTER_KINDS)}")
        if self.jobs < 1:
            raise ClusterError("a cluster needs at least 1 job")
        if self.cores is not None and self.cores < 1:  # Dask would read 0 as "not given" and say so
            raise ClusterError(f"a cluster's jobs need at least 1 core each, got --cores {self.cores}")


@dataclass(frozen=True)
class WhereToRun:
    """Where a batch runs: this machine's processes (the default), a running Dask scheduler,
    or a cluster to start."""

    workers: int = 1
    scheduler: str | None = None
    cluster: ClusterRequest | None = None

    @property
    def local(self) -> bool:
        return self.scheduler is None and self.cluster is None


def _require(module: str) -> Any:
    """Import an optional module, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise DaskMissingError(f"running on a Dask cluster needs distributed and dask-jobqueue: {DASK_EXTRA}") from error


def make_cluster(request: ClusterRequest) -> Any:
    """The cluster object, without any job submitted yet (`scale` submits them): its job script
    (`job_script()`) can be read without a batch system."""
    if request.kind == "local":
        distributed = _require("distributed")
        host = request.host or "127.0.0.1"
        return distributed.LocalCluster(
            n_workers=0, threads_per_worker=request.cores or 1, host=host, dashboard_address=f"{host}:8787", processes=True
        )
    jobqueue = _require("dask_jobqueue")
    _require("distributed")
    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "cores": request.cores,
            "memory": request.memory,
            "walltime": request.walltime,
            "queue": request.queue,
            "account": request.account,
        }.items()
        if value is not None
    }
    if request.job_extra:
        overrides["job_extra_directives"] = list(request.job_extra)
    if request.host is not None:
        overrides["scheduler_options"] = {"host": request.host, "dashboard_address": f"{request.host}:0"}
    try:
        return getattr(jobqueue, JOBQUEUE_CLUSTERS[request.kind])(**overrides)
    except ValueError as error:  # e.g. no cores or memory in the configuration nor the flags
        raise ClusterError(f"cannot set up the {request.kind} cluster: {error}") from error


def dashboard_link(client: Any) -> str | None:
    """The dashboard's address, when the scheduler serves one."""
    if "dashboard" in client.scheduler_info().get("services", {}):
        return str(client.dashboard_link)
    return None


def task_key(func: Callable[..., Any]) -> str:
    """A readable, unique task key: the function's name (a partial's function) and a random
    suffix, so the dashboard and the task stream show `compress_exam-...`, `predict_batch-...`."""
    import uuid

    inner = getattr(func, "func", func)
    return f"{getattr(inner, '__name__', 'task')}-{uuid.uuid4().hex}"


def current_worker_name() -> str | None:
    """The name of the Dask worker running this code (`dask worker --name`); None outside one.
    Never imports distributed: a process that has not imported it is no Dask worker (and
    importing it changes how every exception pickles, through tblib)."""
    import sys

    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return str(distributed.get_worker().name)
    except ValueError:  # not running in a Dask worker
        return None


@dataclass
class DaskExecutor:
    """Runs items as Dask tasks through `client`: one task per item, outcomes as they complete."""

    client: Any
    max_pending: int = MAX_PENDING
    dashboard: str | None = field(default=None)

    def map_outcomes(
        self, func: Callable[[T], R], items: Iterable[T], *, resources: Mapping[str, float] | None = None
    ) -> Iterator[Outcome[T, R]]:
        """`func` must be picklable (a module-level function or a partial of one), and importable
        on the workers. Tasks are impure (each item runs, however alike two look). Stopping the
        iteration early cancels the tasks not yet done. `resources` (e.g. {"GPU": 1}) sends each
        task only to workers that declare them (`dask worker --resources GPU=1`)."""
        remaining = iter(items)
        tasks = self.tasks()
        try:
            for item in remaining:
                tasks.submit(func, item, resources=resources)
                if tasks.pending >= self.max_pending:
                    break
            for outcome in tasks.as_completed():
                yield outcome
                for item in remaining:
                    tasks.submit(func, item, resources=resources)
                    break
        finally:
            tasks.cancel()

    def tasks(self) -> TaskSet:
        """An empty set of tasks to submit one at a time, while other work goes on."""
        return TaskSet(self)

    def outcome(self, future: Any, item: T) -> Outcome[T, R]:
        """The task's own Outcome; an error of the task itself (not of `func`, which `run_one`
        catches) is the item's error: a worker killed too often, or a task that cannot run."""
        if future.status == "finished":
            return future.result()
        if future.status == "cancelled":
            raise ClusterError(
                "the Dask scheduler cancelled the batch (it was restarted or lost); run the same command again to resume"
            )
        error = future.exception()
        killed = _require("distributed.scheduler").KilledWorker
        if isinstance(error, killed):
            deaths = error.allowed_failures + 1
            logger.warning("%r: its worker died %d times while processing it; reported as %s", item, deaths, WORKER_DIED)
            return Outcome(
                item=item,
                error=f"the worker died {deaths} times while processing this item (Dask's "
                f"distributed.scheduler.allowed-failures is {error.allowed_failures})",
                error_type=WORKER_DIED,
            )
        return Outcome(item=item, error=str(error) or repr(error), error_type=type(error).__name__)


class TaskSet:
    """Tasks submitted one at a time (each item's `run_one(func, item)`), whose Outcomes are
    taken as they finish: without waiting (`finished`) between other work, or all that remain
    (`as_completed`). Prediction submits a batch's inference as soon as its exams are compressed."""

    def __init__(self, executor: DaskExecutor) -> None:
        self.executor = executor
        self._items: dict[Any, Any] = {}
        self._completed = _require("distributed").as_completed()

    @property
    def pending(self) -> int:
        """Tasks submitted whose outcome has not been taken yet."""
        return len(self._items)

    def submit(
        self, func: Callable[[T], R], item: T, *, resources: Mapping[str, float] | None = None, priority: int = 0
    ) -> None:
        """Run `func(item)` on the cluster; a higher `priority` runs before tasks submitted
        earlier with a lower one (Dask's own rule), e.g. a GPU batch before more compression."""
        future = self.executor.client.submit(
            run_one, func, item, pure=False, key=task_key(func),
            resources=dict(resources) if resources else None, priority=priority,
        )
        self._items[future] = item
        self._completed.add(future)

    def finished(self) -> list[Outcome[Any, Any]]:
        """The outcomes of the tasks done by now, without waiting."""
        if not self._completed.has_ready():
            return []
        return [self.executor.outcome(future, self._items.pop(future)) for future in self._completed.next_batch(block=False)]

    def as_completed(self) -> Iterator[Outcome[Any, Any]]:
        """The outcomes of every task not taken yet, as they finish (tasks submitted meanwhile
        included)."""
        for future in self._completed:
            yield self.executor.outcome(future, self._items.pop(future))

    def cancel(self) -> None:
        """Cancel the tasks whose outcome was not taken (stopping early)."""
        if self._items:
            self.executor.client.cancel(list(self._items))
            self._items.clear()


@contextlib.contextmanager
def open_executor(where: WhereToRun) -> Iterator[int | Executor]:
    """The number of local workers for a local run; else a DaskExecutor on a client of the
    scheduler or of the cluster started here (its jobs stopped on exit)."""
    if where.local:
        yield where.workers
        return
    distributed = _require("distributed")
    with contextlib.ExitStack() as stack:
        target: Any = where.scheduler
        if where.cluster is not None:
            cluster = stack.enter_context(make_cluster(where.cluster))
            if where.cluster.kind == "local":
                cluster.scale(where.cluster.jobs)
            else:
                cluster.scale(jobs=where.cluster.jobs)
            target = cluster
        try:
            client = stack.enter_context(distributed.Client(target))
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {where.scheduler or target}: {error}") from error
        executor = DaskExecutor(client, dashboard=dashboard_link(client))
        logger.info("running on the Dask scheduler at %s", client.scheduler.address)
        if executor.dashboard:
            logger.info("Dask dashboard: %s", executor.dashboard)
        yield executor
