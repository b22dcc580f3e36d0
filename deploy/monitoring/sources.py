"""What the batch scoring wrote, and the outcomes that arrived since, in the environment's data container.

- **Scores** (the `churn-score` job): `<data root>/scores/`, partitioned by `scoring_date=YYYY-MM-DD`,
  with the model's feature columns plus CustomerId, churn_probability, churn, risk_decile,
  model_version, build, run_id and scored_at. Locally Parquet files, read with pyarrow's datasets in
  batches (only the partitions and columns asked for); on Databricks a Delta table at the same abfss
  path, read with Spark one scoring date at a time.
- **Outcomes**: `<data root>/outcomes/`, CSV or Parquet files with CustomerId, Exited (0/1) and as_of
  (the date the outcome was known). Churn labels arrive weeks after the scores they judge.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from deploy.platform import storage

SCORES_FOLDER = "scores"
OUTCOMES_FOLDER = "outcomes"
PARTITION = "scoring_date"
OUTCOME_COLUMNS = ("CustomerId", "Exited", "as_of")
BATCH_ROWS = 65_536


class OutcomesUnreadable(Exception):
    """The outcomes table exists but is not what it should be; its message is one line saying why."""


@dataclass
class DataContainer:
    """The churn data container: a local folder, or an abfss URI read through the notebook's Spark session."""

    root: str
    spark: Any = None  # a SparkSession, for abfss (Databricks); unused locally

    @property
    def scores_location(self) -> str:
        return storage.join(self.root, SCORES_FOLDER)

    @property
    def outcomes_location(self) -> str:
        return storage.join(self.root, OUTCOMES_FOLDER)

    def score_dates(self, first: date, last: date) -> list[date]:
        """The scoring dates between `first` and `last` (inclusive) that have scores."""
        if storage.is_abfss(self.root):
            frame = self._delta_scores().where(self._between(first, last)).select(PARTITION).distinct()
            found = [_as_date(row[PARTITION]) for row in frame.collect()]
        else:
            folder = Path(self.scores_location)
            found = [_as_date(path.name.split("=", 1)[1]) for path in folder.glob(f"{PARTITION}=*") if path.is_dir()]
        return sorted(day for day in found if day is not None and first <= day <= last)

    def scores(self, day: date, columns: list[str]) -> Iterator[pd.DataFrame]:
        """One scoring date's scores (only `columns` that exist), in batches."""
        if storage.is_abfss(self.root):
            from pyspark.sql import functions

            table = self._delta_scores()
            wanted = [name for name in columns if name in table.columns]
            yield table.where(functions.col(PARTITION) == day.isoformat()).select(*wanted).toPandas()
            return
        import pyarrow.dataset as ds

        dataset = self._parquet_scores()
        wanted = [name for name in columns if name in dataset.schema.names]
        scanner = dataset.scanner(columns=wanted, filter=ds.field(PARTITION) == day.isoformat(), batch_size=BATCH_ROWS)
        for batch in scanner.to_batches():
            if batch.num_rows:
                yield batch.to_pandas()

    def outcomes(self) -> pd.DataFrame | None:
        """The outcomes table (None when there is none), typed: CustomerId, Exited as int, as_of as a date."""
        frame = self._spark_outcomes() if storage.is_abfss(self.root) else self._local_outcomes()
        if frame is None:
            return None
        missing = [name for name in OUTCOME_COLUMNS if name not in frame.columns]
        if missing:
            raise OutcomesUnreadable(
                f"outcomes table {self.outcomes_location} lacks column {missing[0]}; expected "
                f"{', '.join(OUTCOME_COLUMNS)}"
            )
        frame = frame[list(OUTCOME_COLUMNS)].copy()
        frame["as_of"] = pd.to_datetime(frame["as_of"], errors="coerce", utc=True).dt.date
        frame["Exited"] = pd.to_numeric(frame["Exited"], errors="coerce")
        frame = frame.dropna()
        frame = frame[frame["Exited"].isin((0, 1))]
        frame["Exited"] = frame["Exited"].astype(int)
        return frame

    # --- locally -------------------------------------------------------------------------------

    def _parquet_scores(self) -> Any:
        import pyarrow as pa
        import pyarrow.dataset as ds

        partitioning = ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive")
        return ds.dataset(self.scores_location, format="parquet", partitioning=partitioning)

    def _local_outcomes(self) -> pd.DataFrame | None:
        folder = Path(self.outcomes_location)
        files = sorted(path for path in folder.rglob("*") if path.suffix in (".csv", ".parquet") and path.is_file()) \
            if folder.is_dir() else []
        if not files:
            return None
        parts = []
        for path in files:
            try:
                parts.append(pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path))
            except Exception as exc:  # any reader's failure: the file is not a table
                raise OutcomesUnreadable(f"outcomes file {path} is not a readable table: {_first_line(exc)}") from None
        return pd.concat(parts, ignore_index=True)

    # --- on Databricks -------------------------------------------------------------------------

    def _require_spark(self) -> Any:
        if self.spark is None:
            raise RuntimeError(
                f"{self.root} is read through Spark; run the monitor in the Databricks churn-monitor job "
                "(python -m deploy monitor starts it)"
            )
        return self.spark

    def _delta_scores(self) -> Any:
        return self._require_spark().read.format("delta").load(self.scores_location)

    def _between(self, first: date, last: date) -> Any:
        from pyspark.sql import functions

        return functions.col(PARTITION).between(first.isoformat(), last.isoformat())

    def _spark_outcomes(self) -> pd.DataFrame | None:
        spark = self._require_spark()
        parts = []
        for kind, options in (("parquet", {}), ("csv", {"header": "true", "inferSchema": "true"})):
            try:
                frame = (spark.read.format(kind).options(recursiveFileLookup="true", pathGlobFilter=f"*.{kind}",
                                                         **options).load(self.outcomes_location))
                parts.append(frame.toPandas())
            except Exception as exc:  # AnalysisException: no such folder, or no file of that kind in it
                if "Path does not exist" in str(exc) or "Unable to infer schema" in str(exc):
                    continue
                raise
        return pd.concat(parts, ignore_index=True) if parts else None


def read_csv_text(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def _as_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
