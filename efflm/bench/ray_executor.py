"""``efflm bench --executor ray``: every row a Ray task, so a sweep spreads over a cluster.

Each task runs the same ``efflm.bench.worker`` subprocess as the default executor (the row's
isolation, peak RSS and failure modes are the same) on whichever node Ray schedules it, with the
CPUs (``--threads``) and GPUs (``--gpus-per-row``) it declares; only the driver writes the
SQLite database, one row per finished task. A task that dies inside Ray is a failed row and the
sweep goes on. Without ``--address`` a local Ray instance is started (and stopped); with one,
the driver joins that cluster (every node needs efflm and the model installed).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from efflm.core import recipe as recipes
from efflm.core.errors import EfflmError
from efflm.core.progress import progress

CONNECT_TIMEOUT_S = 5.0


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A Ray address that does not answer is an error within ``timeout`` seconds (``ray.init``
    itself would retry for minutes)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EfflmError(f"--address must be HOST:PORT (or ray://HOST:PORT, or auto), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise EfflmError(
            f"Ray address {address} does not answer (no connection within {timeout:g} s: {e.strerror or e})"
        ) from None


def run(
    model: str,
    rows: list[recipes.Recipe],
    worker_args: dict,
    record: Callable[[recipes.Recipe, dict], None],
    address: str | None = None,
    gpus_per_row: float = 0.0,
) -> None:
    """Run every row as a Ray task; ``record(recipe, result)`` as each finishes (in the driver)."""
    try:
        import ray
    except ImportError:
        raise EfflmError("--executor ray needs Ray: pip install 'efflm[ray]'") from None
    from efflm.bench.runner import run_worker

    if address:
        check_address(address)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cpus = int(worker_args.get("threads") or 1)
        task = ray.remote(num_cpus=cpus, num_gpus=gpus_per_row, max_retries=0)(run_worker)
        pending = {task.remote(model, recipes.to_yaml(r), worker_args): r for r in rows}
        slots = max(1, int(ray.cluster_resources().get("CPU", cpus)) // cpus)
        failed = 0
        bar = progress(None, "bench (ray)", total=len(rows), leave=True)
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                recipe = pending.pop(ref)
                try:
                    data = ray.get(ref)
                except ray.exceptions.RayError as e:  # the task (or its node) died inside Ray
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    data = {"status": "failed", "error": f"ray task failed: {first}"[:500]}
                failed += data["status"] != "ok"
                record(recipe, data)
                bar.update(1)
                bar.set_postfix(running=min(len(pending), slots), failed=failed)
        except BaseException:  # Ctrl-C / SIGTERM: every unfinished row is recorded as failed
            for ref, recipe in pending.items():
                ray.cancel(ref, force=True)
                record(recipe, {"status": "failed", "error": "interrupted"})
            raise
        finally:
            bar.close()
    finally:
        ray.shutdown()
