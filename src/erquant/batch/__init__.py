"""The plate / stack engine: ``erquant run`` and :func:`run_batch`.

The only part of erquant that uses ``dask.distributed`` (imported when a run starts).
Plan (readers → work items, :mod:`erquant.io.items`) → map (:mod:`.worker`, one Parquet
part per field, atomic) → reduce (:mod:`.reduce`, plate-level steps and merged tables)
→ analysis (:mod:`erquant.analysis`). See :mod:`.engine` for resume and clusters.
"""

from erquant.batch.engine import RunResult, RunUsageError, plan_run, run_batch

__all__ = ["RunResult", "RunUsageError", "plan_run", "run_batch"]
