"""Schema of `anima server` (conf/server.yaml): a team's MLflow tracking server with a SQL backend store that
serves artifacts itself, so clients on other machines log, register and download through it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from anima.config.fields import setting
from anima.config.stage_schemas import StageConfig, register_schema


@dataclass
class ServerOptions:
    backend_uri: str = setting("postgresql://127.0.0.1:5432/mlflow",
                               "Backend store: runs, params, metrics, registry (PostgreSQL; sqlite:///... for a "
                               "one-machine server).")
    artifacts_destination: str = setting("${paths.root}/mlruns/server-artifacts",
                                         "Where the server keeps artifacts it serves: a local dir or an "
                                         "S3-compatible store (s3://bucket/prefix; MLFLOW_S3_ENDPOINT_URL and AWS_* "
                                         "credentials from the environment).")
    host: str = setting("127.0.0.1", "Interface to listen on (0.0.0.0: every interface; set allowed_hosts too).")
    port: int = setting(5000, "Port to listen on.", ge=1, le=65535)
    workers: int = setting(1, "Server worker processes.", ge=1)
    allowed_hosts: Optional[str] = setting(None, "Host headers the server accepts besides localhost "
                                           "(comma-separated, e.g. mlflow.lab.internal:5000,10.0.0.5:5000).")
    create_db: bool = setting(False, "Create the PostgreSQL database when it does not exist.")
    connect_timeout: int = setting(5, "Seconds to wait for the backend database before failing.", ge=1)
    ready_timeout: int = setting(120, "Seconds to wait for the server to answer /health after starting.", ge=1)


@dataclass
class ServerStageConfig(StageConfig):
    server: ServerOptions = field(default_factory=ServerOptions)


register_schema("server", ServerStageConfig)
