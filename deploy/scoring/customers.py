"""The customer table a scoring run reads, checked on Spark before anything is scored or written.

The expected columns and types are the model's own (its signature), plus `CustomerId`. A CSV is
read with every column as text and each column converted with `try_cast`, so a value that is not
of its column's type is found, counted and shown, never silently turned into an empty value; a
Parquet or Delta table must have columns of compatible types. The checks are one aggregation over
the table (rows, bad values and empty values per column), plus a three-row sample of the first bad
column: nothing is collected to the driver.

A table that lacks a column, holds a value of the wrong type, or has no rows is a UsageError (one
line, exit 2). Empty values are allowed: they are counted per column, and rows with an empty
feature are left unscored (`batch` explains why).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

from deploy.core.contract import ID_COLUMN
from deploy.core.errors import UsageError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# MLflow schema types -> Spark SQL types
SPARK_TYPES = {"string": "STRING", "long": "BIGINT", "integer": "INT", "double": "DOUBLE", "float": "FLOAT",
               "boolean": "BOOLEAN"}
EXPECTED = {"string": "text", "long": "a whole number", "integer": "a whole number", "double": "a number",
            "float": "a number", "boolean": "true or false"}
WHOLE = frozenset({"long", "integer"})
SAMPLE_ROWS = 3
CORRUPT_RECORD = "_unparsed_row"  # where the CSV parser keeps the text of a row with a value it cannot parse


@dataclass(frozen=True)
class Customers:
    frame: DataFrame  # CustomerId and the features, typed as the model's signature says
    location: str
    rows: int
    nulls: dict[str, int]  # per column: rows where it is empty
    incomplete: int  # rows with at least one empty feature

    @property
    def complete(self) -> Column:
        """True for a row whose features are all present (the rows the model scores)."""
        return all_present(self.features)

    @property
    def features(self) -> list[str]:
        return [name for name in self.frame.columns if name != ID_COLUMN]


def read_customers(
    spark: SparkSession, location: str, inputs: list[tuple[str, str]], delta: bool = False
) -> Customers:
    """Read and check the table at `location` against `inputs` ((column, MLflow type), the model's signature).

    The format follows the name: `.csv` (a header row), `.parquet`, else a Delta table folder
    where Delta is available (`delta`, on Databricks) and a Parquet folder where it is not.
    """
    from pyspark.sql import functions as F

    kind = table_format(location, delta)
    expected = [(ID_COLUMN, "long"), *inputs]
    names = [name for name, _ in expected]
    table = _load(spark, location, kind)
    if not table.columns:
        raise UsageError(f"customer table {location} is empty; expected a header ({', '.join(names)}) and rows")
    missing = [name for name in names if name not in table.columns]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(
            f"customer table {location} lacks column {missing[0]}{more}; expected columns {', '.join(names)}"
        )

    if kind == "csv":
        # Parsed with the expected types (much faster than text and casts); a value that does not parse
        # leaves its row's text in the corrupt-record column.
        table = _typed_csv(spark, location, table.columns, dict(expected))
        typed = {name: F.col(name) for name in names}
        bad = {CORRUPT_RECORD: F.col(CORRUPT_RECORD).isNotNull()}
    else:
        converted = {name: _convert(table, name, kind_, location) for name, kind_ in expected}
        typed = {name: column for name, (column, _) in converted.items()}
        bad = {name: wrong for name, (_, wrong) in converted.items() if wrong is not None}
    counts = table.agg(
        F.count(F.lit(1)).alias("rows"),
        _count_where(~all_present([name for name, _ in inputs])).alias("incomplete"),
        *[_count_where(condition).alias(f"bad{index}") for index, condition in enumerate(bad.values())],
        *[_count_where(F.col(name).isNull()).alias(f"null{index}") for index, name in enumerate(names)],
    ).first()
    if not counts["rows"]:
        raise UsageError(f"customer table {location} has a header but no rows; expected customer rows")
    for index, (name, condition) in enumerate(bad.items()):
        if counts[f"bad{index}"]:
            count = int(counts[f"bad{index}"])
            if name == CORRUPT_RECORD:
                raise UsageError(_unparsed_message(table, location, expected, condition, count))
            raise UsageError(_bad_values_message(table, location, name, dict(expected)[name], condition, count))
    return Customers(
        frame=table.select(*[typed[name].alias(name) for name in names]),
        location=location,
        rows=int(counts["rows"]),
        nulls={name: int(counts[f"null{index}"]) for index, name in enumerate(names)},
        incomplete=int(counts["incomplete"]),
    )


def all_present(names: list[str]) -> Column:
    """True for a row where none of the columns `names` is empty."""
    from pyspark.sql import functions as F

    return reduce(lambda both, name: both & F.col(name).isNotNull(), names[1:], F.col(names[0]).isNotNull())


def _count_where(condition: Column) -> Column:
    from pyspark.sql import functions as F

    return F.sum(F.when(condition, 1).otherwise(0))


def table_format(location: str, delta: bool) -> str:
    lowered = location.lower().rstrip("/")
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".parquet") or not delta:
        return "parquet"
    return "delta"


def _load(spark: SparkSession, location: str, kind: str) -> DataFrame:
    """The table as found (a CSV: its header only, every column as text; nothing is parsed yet)."""
    from pyspark.errors import AnalysisException

    reader = spark.read.format(kind)
    if kind == "csv":
        reader = reader.option("header", "true").option("inferSchema", "false")
    try:
        return reader.load(location)
    except AnalysisException as exc:
        if (exc.getErrorClass() or "").startswith("PATH_NOT_FOUND"):
            raise UsageError(f"customer table {location} not found; expected the churn table or --input URI") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"customer table {location} cannot be read as {kind}: {first}") from None


def _typed_csv(spark: SparkSession, location: str, header: list[str], expected: dict[str, str]) -> DataFrame:
    """The CSV with each expected column parsed as its type (the others as text, and only if used)."""
    from pyspark.sql.types import StringType, StructField, StructType, _parse_datatype_string

    fields = [
        StructField(name, _parse_datatype_string(SPARK_TYPES[expected[name]]) if name in expected else StringType())
        for name in header
    ]
    schema = StructType([*fields, StructField(CORRUPT_RECORD, StringType())])
    return (
        spark.read.format("csv").schema(schema)
        .option("header", "true")  # skipped: the schema above is the header, in its order
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
        .load(location)
    )


def _convert(table: DataFrame, name: str, kind: str, location: str) -> tuple[Column, Column | None]:
    """A typed table's column converted to `kind`, and the condition that marks a value that does not
    convert (None when the column already has the type)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, NumericType, StringType, _parse_datatype_string

    source = table.schema[name].dataType
    column = F.col(name)
    if source == _parse_datatype_string(SPARK_TYPES[kind]):
        return column, None
    if kind == "string" or not isinstance(source, StringType | NumericType | BooleanType):
        raise UsageError(_type_message(location, name, source.simpleString(), kind))
    if kind in WHOLE:
        # Through double, so "42" and 42.0 are whole numbers and "42.5" is not (a cast would truncate it).
        as_double = F.expr(f"try_cast(`{name}` AS DOUBLE)")
        converted = F.expr(f"try_cast(try_cast(`{name}` AS DOUBLE) AS {SPARK_TYPES[kind]})")
        wrong = column.isNotNull() & (as_double.isNull() | converted.isNull() | (as_double != converted))
        return converted, wrong
    converted = F.expr(f"try_cast(`{name}` AS {SPARK_TYPES[kind]})")
    return converted, column.isNotNull() & converted.isNull()


def _type_message(location: str, name: str, found: str, kind: str) -> str:
    return f"customer table {location}: column {name} has type {found}; expected {EXPECTED[kind]}"


def _bad_values_message(raw: DataFrame, location: str, name: str, kind: str, bad: Column, count: int) -> str:
    from pyspark.sql import functions as F

    sample = raw.filter(bad).select(F.col(ID_COLUMN), F.col(name)).limit(SAMPLE_ROWS).collect()
    shown = ", ".join(f"{row[1]!r} ({ID_COLUMN} {row[0]})" for row in sample)
    more = f" and {count - len(sample)} more" if count > len(sample) else ""
    rows = "row" if count == 1 else "rows"
    return f"customer table {location}: column {name} holds {shown}{more} ({count} {rows}); expected {EXPECTED[kind]}"


def _unparsed_message(
    table: DataFrame, location: str, expected: list[tuple[str, str]], condition: Column, count: int
) -> str:
    """Name the first column whose text did not parse, with up to SAMPLE_ROWS of its values."""
    import csv

    names = [name for name, _ in expected]
    header = [name for name in table.columns if name != CORRUPT_RECORD]
    rows = table.filter(condition).select(CORRUPT_RECORD, *names).limit(SAMPLE_ROWS).collect()
    found: dict[str, list[str]] = {}
    for row in rows:
        text = next(csv.reader([row[CORRUPT_RECORD]]), [])
        values = dict(zip(header, text, strict=False))
        for name in names:
            if row[name] is None and values.get(name, "").strip():
                found.setdefault(name, []).append(f"{values[name]!r} ({ID_COLUMN} {values.get(ID_COLUMN, '?')})")
                break
    rows_text = "row" if count == 1 else "rows"
    if not found:
        line = str(rows[0][CORRUPT_RECORD])[:120] if rows else ""
        return (f"customer table {location}: {count} {rows_text} cannot be parsed, e.g. {line!r}; "
                f"expected {len(header)} fields")
    name, shown = next(iter(found.items()))
    kind = dict(expected)[name]
    return (f"customer table {location}: column {name} holds {', '.join(shown)} ({count} {rows_text} with a value "
            f"that is not of its column's type); expected {EXPECTED[kind]}")
