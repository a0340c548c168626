"""Inference settings (environment only; see .env.example)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import MlflowSettings


class Settings(MlflowSettings):
    spec: Path | None = Field(default=None, description="FTI_SPEC: the dataset spec file to serve")
    host: str = Field(default="127.0.0.1", description="FTI_HOST: the address to listen on")
    auth: str = Field(default="auto", pattern="^(auto|required|off)$", description="FTI_AUTH: auto (API keys "
                      "required once any is configured; a service listening beyond loopback refuses to start "
                      "without one), required, or off")
    api_keys: str | None = Field(default=None, description="FTI_API_KEYS: comma-separated ID:SHA256:SCOPES "
                                 "entries (scopes predict, read-predictions, read-model joined by +); "
                                 "`fti keys new` prints one")
    api_keys_file: Path | None = Field(default=None, description="FTI_API_KEYS_FILE: a file of such entries, one "
                                       "per line (a mounted secret)")
    allowed_hosts: str | None = Field(default=None, description="FTI_ALLOWED_HOSTS: "
                                          "comma-separated Host names the service answers to (* for any); default "
                                          "the loopback names when listening on loopback, else any (with a warning)")
    max_concurrent_requests: int = Field(default=64, ge=1, le=10_000, description="FTI_MAX_CONCURRENT_REQUESTS: "
                                         "non-probe requests in flight at once; the next gets 503 + Retry-After")
    max_concurrent_large_requests: int | None = Field(default=None, ge=1, le=10_000, description=
                                                      "FTI_MAX_CONCURRENT_LARGE_REQUESTS: of those, requests with "
                                                      "a body over 64 KiB (batches); default: the number of CPUs")
    cpu_slots: int = Field(default=1, ge=0, le=64, description="FTI_CPU_SLOTS: large-body decoding, batch "
                           "scoring and prediction-log writing running at once beside the event loop (the rest wait "
                           "in their threads, so probes stay fast); 0: no limit")
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=3600, description="FTI_REQUEST_TIMEOUT_SECONDS: "
                                           "a request not answered in this time gets 504")
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=16 * 1024 * 1024, description="FTI_MAX_HEADER_BYTES:"
                                  " request line + headers; more gets 431")
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600, description="FTI_HEADER_TIMEOUT_SECONDS: "
                                          "time to send a request's headers (slow clients are closed with 408)")
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600, description="FTI_BODY_TIMEOUT_SECONDS: time "
                                        "to send a request's body once its headers are in")
    port: int = Field(default=8000, ge=1, le=65535, description="the port to listen on")
    model_name: str | None = Field(default=None, description="default: the spec's model.name")
    max_batch_rows: int = Field(default=1000, ge=1, le=100_000, description="records per POST /predict request "
                                "(413 above)")
    max_invocation_rows: int = Field(default=10_000, ge=1, le=1_000_000, description="FTI_MAX_INVOCATION_ROWS: "
                                     "rows per POST /invocations request (413 above)")
    log_format: str = Field(default="json", pattern="^(json|text)$", description="FTI_LOG_FORMAT: json (one "
                            "object per line) or text")
    access_log: bool = Field(default=True, description="FTI_ACCESS_LOG: one log line per request (request id, "
                             "endpoint, status, duration, model version, rows, prediction ids)")
    access_log_probes: bool = Field(default=False, description="also access-log health probes and /metrics "
                                    "scrapes answered 200 (failing ones are always logged)")
    log_request_bodies: bool = Field(default=False, description="FTI_LOG_REQUEST_BODIES: add the first 4 KiB "
                                     "of each request body to its access-log line (off: bodies hold client data)")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="request body limit in bytes (413 "
                                "above)")
    load_retry_seconds: float = Field(default=1.0, gt=0, description="FTI_LOAD_RETRY_SECONDS: first wait before "
                                      "another load or alias-confirmation attempt; doubles up to "
                                      "FTI_LOAD_RETRY_MAX_SECONDS, with jitter")
    load_retry_max_seconds: float = Field(default=3.0, gt=0, le=600, description="FTI_LOAD_RETRY_MAX_SECONDS: the "
                                          "longest wait between attempts while the registry is unreachable (the "
                                          "service is ready within about this long after it returns)")
    reload_interval_seconds: float = Field(default=10.0, ge=0, description="FTI_RELOAD_INTERVAL_SECONDS: how "
                                           "often the served alias is resolved; a new version behind it is "
                                           "loaded, checked and swapped in without a restart (0: never)")
    reload_refused_retry_seconds: float = Field(default=600.0, gt=0, description="a version refused by a hot "
                                                "reload is tried again only after this long, or at once when "
                                                "its registry tags change")
    allow_env_mismatch: bool = Field(default=False, description="serve a model trained with other "
                                     "prediction-relevant package versions (logged loudly)")
    start_from_cache: bool = Field(default=True, description="FTI_START_FROM_CACHE: at start, serve the version "
                                   "this model cache served last (after every check) while the registry is asked "
                                   "whether the alias still points there; false: wait for the registry")
    fast_path: bool = Field(default=True, description="FTI_FAST_PATH: score through the numpy fast path compiled "
                            "from the fitted pipeline, used only after it is proven bit-identical at load")
    fast_path_tree_rows: int = Field(default=128, ge=0, le=100_000, description="batches up to this many rows walk "
                                     "all HistGradientBoosting trees at once; larger ones call the estimator")
    online_fast_path: bool = Field(default=True, description="FTI_ONLINE_FAST_PATH: compute /predict's features "
                                   "from the served feature version held in memory, in numpy, used only after "
                                   "it is proven bit-identical to the pandas path at load")
    feature_refresh_seconds: float = Field(default=2.0, gt=0, le=3600, description="FTI_FEATURE_REFRESH_SECONDS: "
                                           "how often the online fast path checks for a newly published "
                                           "feature version (then indexes, verifies and swaps it in)")
    gil_switch_interval: float = Field(default=0.001, gt=0, le=0.1, description="FTI_GIL_SWITCH_INTERVAL: "
                                       "seconds a thread holds the GIL before the event loop may take it back "
                                       "(Python's default 0.005 puts the prediction log's work in /predict's p99)")
    @property
    def allowed_host_list(self) -> list[str]:
        return [h.strip() for h in (self.allowed_hosts or "").split(",") if h.strip()]

    model_cache_dir: Path | None = Field(default=None, description="default: <FTI_DATA_DIR>/model-cache")
    prediction_log: bool = Field(default=True, description="FTI_PREDICTION_LOG: record every prediction in "
                                 "fti_predictions (inputs, outputs, model and feature versions)")
    prediction_log_queue: int = Field(default=50_000, ge=1, le=10_000_000, description="rows the log may "
                                      "hold in memory before requests block briefly, then rows are dropped "
                                      "(counted and logged as errors)")
    prediction_log_process: bool = Field(default=True, description="FTI_PREDICTION_LOG_PROCESS: build and write "
                                         "the log's rows in a process of its own at a lower CPU priority (in a "
                                         "thread of the server they cost /predict's p99: docs/monitoring.md); "
                                         "false, or if that process cannot start or dies: a thread of the server")
    prediction_log_nice: int = Field(default=10, ge=0, le=19, description="FTI_PREDICTION_LOG_NICE: the niceness "
                                     "added to the log's writer process")
    prediction_log_sched_idle: bool = Field(default=True, description="FTI_PREDICTION_LOG_SCHED_IDLE: the log's "
                                            "writer process runs under Linux's SCHED_IDLE policy, getting a CPU "
                                            "only when serving does not want it (a backlog past "
                                            "FTI_PREDICTION_LOG_QUEUE rows makes requests wait, then drop rows)")
    prediction_log_flush_seconds: float = Field(default=0.02, gt=0, le=60, description="a batch of the log is "
                                                "written when it has 500 rows or this long after its first row; "
                                                "short, so that each batch holds the interpreter briefly (0.2 s "
                                                "batches tripled /predict p99 at c=8: docs/monitoring.md); the "
                                                "log's thread writer only (FTI_PREDICTION_LOG_PROCESS=false)")
    prediction_log_process_flush_seconds: float = Field(default=0.25, gt=0, le=60, description="the writer "
                                                        "process's batches: the server hands its buffered "
                                                        "requests to the process, and the process writes a batch, "
                                                        "this long after their first row (or at 500 rows); long, "
                                                        "because a batch costs serving nothing there and each "
                                                        "wake-up and transaction costs CPU (docs/benchmarks.md)")

    @property
    def cache_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "model-cache").expanduser().resolve()
