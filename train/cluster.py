"""Several training processes (machines, or processes on one machine) as one data-parallel job.

The job runs on Keras' JAX backend (`keras.distribution.initialize`, then `DataParallel` over every device of
every process): TensorFlow's `MultiWorkerMirroredStrategy` fails inside Keras 3's `fit` (keras-team/keras#20585).
A job is described, first found first, by the `--coordinator/--num-processes/--process-id` flags, by the standard
`TF_CONFIG` (its chief, then its workers, in order; the first address is the coordinator), or by Keras' own
`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`.

Every process computes the same thing (same data stream, replicated weights) and feeds its share of each batch.
Process 0, the chief, writes the run folder; process K keeps its own copy of the run under `workers/K/` inside it
(on its own machine when the disk is not shared), which is what it resumes from.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import keras

log = logging.getLogger(__name__)
KERAS_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass(frozen=True)
class Job:
    coordinator: str  # host:port of process 0
    processes: int
    index: int  # this process


def from_tf_config(text: str) -> Job:
    """The job a `TF_CONFIG` describes; a malformed one is a one-line `ValueError`."""
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        members = [(kind, i, address) for kind in ("chief", "worker")
                   for i, address in enumerate(cluster.get(kind, []))]
        index = [(kind, i) for kind, i, _ in members].index((task["type"], int(task["index"])))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG: expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, \"task\": "
                         f"{{\"type\": \"worker\", \"index\": 0}}}}, this task among its chief/workers ({e})") from None
    return Job(members[0][2], len(members), index)


def describe(coordinator: str | None = None, processes: int | None = None, index: int | None = None) -> Job | None:
    """The job this process belongs to (None: a single-process run)."""
    given = [v is not None for v in (coordinator, processes, index)]
    if any(given):
        if not all(given):
            raise ValueError("--coordinator, --num-processes and --process-id go together (or use TF_CONFIG)")
        job = Job(coordinator, processes, index)
    elif os.environ.get("TF_CONFIG"):
        job = from_tf_config(os.environ["TF_CONFIG"])
    elif all(os.environ.get(k) for k in KERAS_ENV):
        address, n, i = (os.environ[k] for k in KERAS_ENV)
        job = Job(address.split(",")[0], int(n), int(i))
    else:
        return None
    if not 0 <= job.index < job.processes:
        raise ValueError(f"process id {job.index} is outside 0..{job.processes - 1}")
    return job


def join(job: Job | None) -> None:
    """Join the job before anything touches a device (JAX allows it only first)."""
    if job is None or job.processes == 1:
        return
    if keras.backend.backend() != "jax":
        raise ValueError("training on several processes runs on Keras' JAX backend: set KERAS_BACKEND=jax "
                         "(TensorFlow's MultiWorkerMirroredStrategy fails inside Keras 3's fit: keras#20585)")
    log.info("joining a %d-process job as process %d (coordinator %s)", job.processes, job.index, job.coordinator)
    keras.distribution.initialize(job.coordinator, job.processes, job.index)


def process_count() -> int:
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index() -> int:
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def own_rows(n: int) -> slice:
    """This process's share of a global batch of `n` rows (`n` divides by the number of processes): every process
    holds the same batch and feeds its own slice of it."""
    share = n // process_count()
    return slice(process_index() * share, (process_index() + 1) * share)


def any_process(flag: bool) -> bool:
    """True on every process when it is true on any: a decision to stop must be taken by all of them together
    (a process that trained on alone would wait for the others forever)."""
    if process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def own_folder(run_path: Path) -> Path:
    """Where this process keeps the run: the run folder itself on the chief, `workers/K/` inside it elsewhere."""
    k = process_index()
    return Path(run_path) if k == 0 else Path(run_path) / "workers" / str(k)
