"""The scores table: `<data root>/scores/`, one partition per scoring date, replaced whole by a re-run.

On Databricks it is a Delta table partitioned by `scoring_date`; a run overwrites its date with
`replaceWhere`, one Delta commit, so readers see the previous scores of that date or the new ones.

Locally it is Parquet (Delta would need delta-spark's jars from Maven, which this machine cannot
reach), in Hive layout: `scores/scoring_date=2026-12-01/part-*.parquet`. A run writes its partition
beside the table (`scores/_staging/...`), then swaps it in with one atomic rename, so a reader lists
the old partition's files or the new one's, never a mix. The replaced partition is kept in
`scores/_replaced/` until the date is replaced again (a reader that listed the old files can still
read them; it is also the undo). Spark, pandas and pyarrow ignore folders starting with `_`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from config import EnvConfig
from deploy.core.contract import SCORES_PATH
from deploy.core.report import progress
from deploy.platform import storage, tracking

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from deploy.platform.outputs import StackOutputs

PARTITION_COLUMN = "scoring_date"
STAGING = "_staging"
REPLACED = "_replaced"
LOCKS = "_locks"


def location(env: EnvConfig, outputs: StackOutputs | None) -> str:
    """The scores table of `env`: a local folder, or abfss on the churndata container."""
    return storage.join(tracking.data_root(env, outputs), SCORES_PATH)


def partition_location(table: str, scoring_date: str) -> str:
    return storage.join(table, f"{PARTITION_COLUMN}={scoring_date}")


def replace_partition(frame: DataFrame, table: str, scoring_date: str, *, delta: bool) -> str:
    """Write `frame` (without the partition column) as the partition of `scoring_date`, replacing it
    atomically; returns the partition's location."""
    if delta:
        _replace_delta(frame, table, scoring_date)
    else:
        _replace_parquet(frame, Path(table), scoring_date)
    return partition_location(table, scoring_date)


def read_partition(spark: SparkSession, table: str, scoring_date: str, *, delta: bool) -> DataFrame:
    """The scores of `scoring_date`, as readers of the table see them."""
    from pyspark.sql import functions as F

    if delta:
        return spark.read.format("delta").load(table).where(F.col(PARTITION_COLUMN) == F.lit(scoring_date).cast("date"))
    return spark.read.parquet(partition_location(table, scoring_date))


def _replace_delta(frame: DataFrame, table: str, scoring_date: str) -> None:
    from pyspark.sql import functions as F

    # `scoring_date` was checked to be YYYY-MM-DD (deploy.scoring.request), so it is safe in the predicate.
    (
        frame.withColumn(PARTITION_COLUMN, F.lit(scoring_date).cast("date"))
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"{PARTITION_COLUMN} = '{scoring_date}'")
        .partitionBy(PARTITION_COLUMN)
        .save(table)
    )


def _replace_parquet(frame: DataFrame, table: Path, scoring_date: str) -> None:
    name = f"{PARTITION_COLUMN}={scoring_date}"
    staging = table / STAGING / f"{name}.{uuid.uuid4().hex[:12]}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        frame.write.mode("errorifexists").parquet(str(staging))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    live = table / name
    replaced = table / REPLACED / name
    with _locked(table / LOCKS / f"{name}.lock"):
        if not live.exists():
            os.rename(staging, live)
            return
        shutil.rmtree(replaced, ignore_errors=True)  # the partition replaced the time before
        replaced.parent.mkdir(parents=True, exist_ok=True)
        if _exchange(staging, live):
            os.rename(staging, replaced)  # the old partition, now at the staging path
        else:  # no atomic exchange here: two renames, with a moment in which the date has no partition
            os.rename(live, replaced)
            os.rename(staging, live)
    progress(f"  replaced partition {name}; the previous one is kept in {replaced}")


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_current_directory, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_current_directory, os.fsencode(first), at_current_directory, os.fsencode(second),
                 rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # an old kernel, or a file system without it
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One swap per date at a time, across processes (a second run of the date waits for the first)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
