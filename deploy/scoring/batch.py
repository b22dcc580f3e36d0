"""Score the whole customer base with one model version on Spark, and record the run: the steps in order.

The same function runs in the Databricks `churn-score` job (the notebook's `spark`) and in
`score --env local` (a local-mode session). The model runs on the executors through
`mlflow.pyfunc.spark_udf`: each Python worker loads the model and scores Arrow batches; the driver
only ever receives aggregates (counts, 20 histogram bins, nine decile cut points) and the ten
riskiest customers. The passes over the table: the input checks; the decile cut points, from the
scores of a random sample of DECILE_SAMPLE customers (all of them when there are fewer); scoring
and writing; and reading back the written partition (a few columns) for the run's record.

Rows with an empty feature are not scored: the model's signature has integer columns, which
cannot hold a missing value, the online endpoint refuses such a row, and training never saw one.
They stay in the output with empty `churn_probability`, `churn` and `risk_decile`, and the run
counts them (and the empty values of each column).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.core.contract import (
    DECISION,
    ID_COLUMN,
    PROBABILITY,
    REGISTERED_MODEL,
    SCORING_EXPERIMENT,
    SOURCE_DATA_PATH,
    TAG_BUILD,
)
from deploy.core.errors import UsageError
from deploy.core.report import progress
from deploy.platform import storage, tracking
from deploy.scoring import lineage, scores_table
from deploy.scoring.customers import SPARK_TYPES, Customers, read_customers
from deploy.scoring.request import ScoringRequest

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from deploy.platform.outputs import StackOutputs

RISK_DECILE = "risk_decile"
LINEAGE_COLUMNS = ("model_version", "build", "run_id", "scoring_run_id", "scored_at")
RESULT_TYPE = f"{PROBABILITY} double, {DECISION} int"
# Risk deciles are cut at the quantiles of this many customers' scores, drawn at random (rank error about
# 0.1 percentile point), so the table is scored once, not kept between passes.
DECILE_SAMPLE = 100_000
DECILE_SEED = 20_261_201
DECILES = [step / 10 for step in range(1, 10)]
QUANTILE_ERROR = 0.0005  # approxQuantile's relative rank error on the sample
RISKIEST = 10
ARROW_BATCH_ROWS = 50_000


@dataclass(frozen=True)
class ModelVersion:
    version: str
    build: str
    run_id: str  # the training run the version was registered from
    uri: str
    threshold: float | None
    inputs: list[tuple[str, str]]  # (column, MLflow type), from the model's signature


@dataclass(frozen=True)
class ScoreResult:
    environment: str
    scoring_date: str
    model_version: str
    build: str
    model_run_id: str
    slot: str | None  # the slot the version came from; None when it was given
    run_id: str  # the scoring run in experiment churn-scoring
    input: str
    output: str  # the date's partition
    table: str
    table_format: str
    rows: int
    rows_scored: int
    rows_unscored: int  # rows with an empty feature
    nulls: dict[str, int]
    churners: int  # rows whose decision is churn
    mean_probability: float | None
    risk_decile_cuts: list[float]  # the lowest probability of deciles 9 down to 1 (ascending)
    seconds: float  # reading, checking, scoring and writing (not the session's or MLflow's start)
    riskiest: list[dict[str, Any]] = field(default_factory=list)
    experiment: str = SCORING_EXPERIMENT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_customers(
    spark: SparkSession, env: EnvConfig, request: ScoringRequest, outputs: StackOutputs | None = None
) -> ScoreResult:
    """Score `env`'s customer table (or `request.input`) and replace the scores of `request.scoring_date`."""
    tracking.use_environment(env, outputs)
    delta = not env.is_local
    # Larger Arrow batches than Spark's 10,000 rows: the model's per-call cost is paid less often (about a
    # quarter more rows per second here), and a batch of 50,000 customers is still only a few megabytes.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))

    # 1. The model version: the one asked for, else the one the slot serves (the serving target's word).
    version = request.version or serving_version(env, outputs, request.slot)
    model = describe_model(version)
    source = request.input or storage.join(tracking.data_root(env, outputs), SOURCE_DATA_PATH)
    table = scores_table.location(env, outputs)
    via = f" (serving {request.slot})" if request.by_slot else ""
    progress(f"score {source} with model version {version}{via}, build {model.build}, for {request.scoring_date}")

    # 2. The customer table, checked before anything is scored or written: bad input stops here.
    started = time.monotonic()
    customers = read_customers(spark, source, model.inputs, delta=delta)
    progress(f"  {customers.rows} customers; {customers.incomplete} with an empty feature, left unscored")

    # 3. The lineage run; everything after this is recorded in it (FAILED if a step raises).
    tags = {
        lineage.TAG_MODEL_VERSION: version, lineage.TAG_BUILD: model.build, lineage.TAG_MODEL_RUN: model.run_id,
        lineage.TAG_SCORING_DATE: request.scoring_date, lineage.TAG_INPUT: source,
        lineage.TAG_OUTPUT: scores_table.partition_location(table, request.scoring_date),
        **({lineage.TAG_SLOT: request.slot} if request.by_slot else {}),
    }
    with lineage.scoring_run(env, tags, run_name=f"score-{request.scoring_date}-v{version}") as run:
        # 4. Score on the executors, with each customer's risk decile (cut points from a sample's scores).
        predict = model_udf(spark, model)
        cuts = risk_decile_cuts(customers, predict)
        scored = score_frame(customers, predict, cuts, model, run.info.run_id, datetime.now(UTC))
        # 5. Replace the date's partition atomically; the previous scores of that date stay until then.
        output = scores_table.replace_partition(scored, table, request.scoring_date, delta=delta)
        # 6. The run's record, from what was written: counts, the histogram, the riskiest customers.
        written = scores_table.read_partition(spark, table, request.scoring_date, delta=delta)
        summary = {**summarise(written), "risk_decile_cuts": cuts}
        riskiest = riskiest_customers(written)
        seconds = round(time.monotonic() - started, 3)
        progress(f"  wrote {output} in {seconds:.1f}s: {summary['rows_scored']} scored, "
                 f"{summary['churners']} churners at threshold {model.threshold}")
        _log(model, customers, summary, output, table, delta, seconds, request.scoring_date)

    return ScoreResult(
        environment=env.name, scoring_date=request.scoring_date, model_version=version, build=model.build,
        model_run_id=model.run_id, slot=request.slot if request.by_slot else None, run_id=run.info.run_id,
        input=source, output=output, table=table, table_format="delta" if delta else "parquet",
        rows=customers.rows, rows_scored=summary["rows_scored"], rows_unscored=customers.incomplete,
        nulls=customers.nulls, churners=summary["churners"], mean_probability=summary["mean_probability"],
        risk_decile_cuts=summary["risk_decile_cuts"], seconds=seconds, riskiest=riskiest,
    )


# --- the steps ------------------------------------------------------------------------------------


def serving_version(env: EnvConfig, outputs: StackOutputs | None, slot: str) -> str:
    """The model version the slot's deployment with the traffic serves (not an MLflow alias: Azure ML's
    registry has none)."""
    from deploy.release import targets

    endpoint = targets.for_environment(env, outputs).describe(slot)
    serving = endpoint.serving if endpoint is not None else None
    if serving is None or not serving.version:
        raise UsageError(
            f"slot {slot} ({env.endpoint_name(slot)}) serves no model version; release one first "
            f"(python -m deploy release --to {slot}) or pass --version"
        )
    return serving.version


def describe_model(version: str) -> ModelVersion:
    """The registered version, where it comes from, and what it expects and answers (its MLmodel only)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from deploy.release import registry

    try:
        found = registry.client().get_model_version(REGISTERED_MODEL, version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UsageError(
                f"model {REGISTERED_MODEL} has no version {version}; expected a registered version"
            ) from None
        raise
    uri = registry.model_uri(version)
    info = mlflow.models.get_model_info(uri)
    outputs = info.signature.outputs.input_names() if info.signature and info.signature.outputs else []
    if PROBABILITY not in outputs or info.signature.inputs is None:
        raise UsageError(
            f"model version {version} answers {outputs or 'no declared output'}, not {PROBABILITY} and {DECISION}; "
            "it predates the scoring contract: train and release a new build"
        )
    config = info.flavors.get("python_function", {}).get("config") or {}
    return ModelVersion(
        version=version,
        build=(found.tags or {}).get(TAG_BUILD, ""),
        run_id=found.run_id or "",
        uri=uri,
        threshold=float(config["threshold"]) if "threshold" in config else None,
        inputs=[(spec.name, spec.type.name) for spec in info.signature.inputs.inputs],
    )


def model_udf(spark: SparkSession, model: ModelVersion) -> Any:
    """The model as a Spark UDF returning the contract's struct (probability, decision), run on the executors."""
    import mlflow

    # spark_udf warns that env_manager="local" does not rebuild the training environment: by design, the
    # job installs the model's pinned requirements (its check of those pins still warns on a mismatch).
    with _quiet("mlflow.pyfunc", "mlflow.models.flavor_backend_registry"):
        return mlflow.pyfunc.spark_udf(
            spark, model.uri, result_type=RESULT_TYPE, env_manager="local",
            # One OpenMP thread per Python worker: Spark runs one worker per core already.
            extra_env={"OMP_NUM_THREADS": "1"},
        )


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    import logging

    loggers = [logging.getLogger(name) for name in names]
    levels = [found.level for found in loggers]
    for found in loggers:
        found.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for found, level in zip(loggers, levels, strict=True):
            found.setLevel(level)


def risk_decile_cuts(customers: Customers, predict: Any, sample_rows: int = DECILE_SAMPLE) -> list[float]:
    """The probabilities at which deciles 9 down to 1 start (ascending), from a random sample's scores."""
    from pyspark.sql import functions as F

    scorable = customers.rows - customers.incomplete
    if scorable <= 0:
        return []
    sample = customers.frame.filter(customers.complete)
    if scorable > sample_rows:
        sample = sample.sample(fraction=sample_rows / scorable, seed=DECILE_SEED)
    scores = sample.select(predict(*[F.col(name) for name in customers.features])[PROBABILITY].alias(PROBABILITY))
    return [float(cut) for cut in scores.approxQuantile(PROBABILITY, DECILES, QUANTILE_ERROR)]


def score_frame(
    customers: Customers, predict: Any, cuts: list[float], model: ModelVersion, scoring_run_id: str,
    scored_at: datetime,
) -> DataFrame:
    """The customers with the model's answer (empty for a row with an empty feature), their risk decile and
    the lineage columns, in the scores table's column order."""
    from pyspark.sql import functions as F

    # One pass over the table: a row with an empty feature goes to the model with placeholders (the
    # model's schema refuses empty integers) and its answer is discarded, rather than splitting the
    # table in two branches that would each read it.
    answer = predict(*[F.coalesce(F.col(name), _placeholder(kind)) for name, kind in model.inputs])
    complete = customers.complete
    probability = F.when(complete, answer[PROBABILITY]).alias(PROBABILITY)
    decision = F.when(complete, answer[DECISION]).alias(DECISION)
    return customers.frame.select(*customers.frame.columns, probability, decision).select(
        *customers.frame.columns, PROBABILITY, DECISION, risk_decile(cuts).alias(RISK_DECILE),
        F.lit(model.version).alias("model_version"), F.lit(model.build).alias("build"),
        F.lit(model.run_id).alias("run_id"), F.lit(scoring_run_id).alias("scoring_run_id"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
    )


def _placeholder(kind: str) -> Column:
    from pyspark.sql import functions as F

    return F.lit("") if kind == "string" else F.lit(0).cast(SPARK_TYPES[kind])


def risk_decile(cuts: list[float]) -> Column:
    """1 for the riskiest tenth up to 10, from the cut points (ascending: where deciles 9 down to 1 start)."""
    from pyspark.sql import functions as F

    probability = F.col(PROBABILITY)
    if not cuts:
        return F.lit(None).cast("int")
    decile = F.when(probability.isNull(), F.lit(None).cast("int"))
    for rank, cut in enumerate(reversed(cuts), start=1):
        decile = decile.when(probability >= F.lit(cut), F.lit(rank))
    return decile.otherwise(F.lit(len(cuts) + 1))


def summarise(written: DataFrame) -> dict[str, Any]:
    """Counts and the probability histogram of the written scores: one aggregation on the executors."""
    from pyspark.sql import functions as F

    probability = F.col(PROBABILITY)
    bin_of = F.least(F.floor(probability * lineage.HISTOGRAM_BINS), F.lit(lineage.HISTOGRAM_BINS - 1))
    totals = written.agg(
        F.count(probability).alias("rows_scored"), F.sum(F.col(DECISION)).alias("churners"),
        F.avg(probability).alias("mean_probability"),
        *[F.count(F.when(bin_of == index, 1)).alias(f"bin{index}") for index in range(lineage.HISTOGRAM_BINS)],
    ).first()
    return {
        "rows_scored": int(totals["rows_scored"]),
        "churners": int(totals["churners"] or 0),
        "mean_probability": None if totals["mean_probability"] is None else float(totals["mean_probability"]),
        "histogram": [int(totals[f"bin{index}"]) for index in range(lineage.HISTOGRAM_BINS)],
    }


def riskiest_customers(written: DataFrame, count: int = RISKIEST) -> list[dict[str, Any]]:
    """The `count` customers with the highest probability (a top-k per partition, not a sort of the table)."""
    from pyspark.sql import functions as F

    shown = [name for name in written.columns if name not in (*LINEAGE_COLUMNS, scores_table.PARTITION_COLUMN)]
    top = written.filter(F.col(PROBABILITY).isNotNull()).orderBy(F.desc(PROBABILITY), F.asc(ID_COLUMN)).limit(count)
    return [row.asDict() for row in top.select(*shown).collect()]


def _log(
    model: ModelVersion, customers: Customers, summary: dict[str, Any], output: str, table: str, delta: bool,
    seconds: float, scoring_date: str,
) -> None:
    params = {
        "input": customers.location, "output": output, "table": table, "table_format": "delta" if delta else "parquet",
        "decision_threshold": model.threshold, "model_uri": model.uri,
    }
    metrics: dict[str, float] = {
        "rows": customers.rows, "rows_scored": summary["rows_scored"], "rows_unscored": customers.incomplete,
        "churners": summary["churners"], "seconds": seconds,
        **{f"nulls_{name}": count for name, count in customers.nulls.items()},
    }
    if summary["mean_probability"] is not None:
        metrics["mean_probability"] = summary["mean_probability"]
    figure = lineage.histogram_figure(
        summary["histogram"], model.threshold, f"churn scores {scoring_date}, model version {model.version}"
    )
    try:
        lineage.log_results(params, metrics, {**summary, "nulls": customers.nulls, "output": output}, figure)
    finally:
        lineage.close_figure(figure)


