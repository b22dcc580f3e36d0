"""Read and write CSV text in the churn data container: a local folder, or ADLS Gen2 over abfss.

Direct abfss access through azure-storage-file-datalake (DBFS mounts are deprecated), with an
azure-identity credential: in a Databricks notebook that is the automation identity, whose secret
the notebook exported from the Key Vault-backed scope; on a pipeline agent, the Azure CLI login.
Locations are strings: `abfss://<container>@<account>.dfs.core.windows.net/<path>` or a local path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ABFSS = "abfss"


@dataclass(frozen=True)
class AbfssLocation:
    account_url: str
    container: str
    path: str


def join(root: str, relative: str) -> str:
    """`relative` (a POSIX path such as runs/<build>/test.csv) under a data root."""
    return f"{root.rstrip('/')}/{relative}" if is_abfss(root) else str(Path(root) / relative)


def is_abfss(location: str) -> bool:
    return location.startswith(f"{ABFSS}://")


def parse_abfss(location: str) -> AbfssLocation:
    parsed = urlparse(location)
    container, _, host = parsed.netloc.partition("@")
    if parsed.scheme != ABFSS or not container or not host:
        raise ValueError(f"'{location}' is not an abfss URI; expected abfss://<container>@<account>.dfs.<suffix>/<path>")
    return AbfssLocation(f"https://{host}", container, parsed.path.lstrip("/"))


def read_text(location: str, credential: TokenCredential | None = None, service_client: Any = None) -> str:
    """The text at `location`; FileNotFoundError when there is none."""
    if not is_abfss(location):
        return Path(location).read_text()
    from azure.core.exceptions import ResourceNotFoundError

    where = parse_abfss(location)
    file = _file_client(where, credential, service_client)
    try:
        return file.download_file().readall().decode("utf-8")
    except ResourceNotFoundError:
        raise FileNotFoundError(location) from None


def write_text(location: str, text: str, credential: TokenCredential | None = None, service_client: Any = None) -> None:
    """Write `text` to `location`, replacing what was there (parent folders are created)."""
    if not is_abfss(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)
        return
    where = parse_abfss(location)
    _file_client(where, credential, service_client).upload_data(text.encode("utf-8"), overwrite=True)


def _file_client(where: AbfssLocation, credential: TokenCredential | None, service_client: Any) -> Any:
    if service_client is None:
        from azure.storage.filedatalake import DataLakeServiceClient

        service_client = DataLakeServiceClient(account_url=where.account_url, credential=credential)
    return service_client.get_file_system_client(where.container).get_file_client(where.path)
