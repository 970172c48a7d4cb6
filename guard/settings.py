"""One frozen Settings object, built once from GUARD_* environment variables, validated here.

Two checks, each written once: the rules across fields (a webhook needs its secret) run in
``__post_init__``, so no Settings breaking them exists; :meth:`Settings.validate` checks every
fixed-value (``Literal``) field against its values, which ``from_env`` already refuses but code
may pass directly. ``Runtime.open`` calls ``validate`` once, so a bad value stops the start-up
with the variable named; the parts never check settings again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from guard.errors import ConfigError, SettingsError

ScorerName = Literal["bundled", "reranker", "clip", "remote"]
AuthMode = Literal["auto", "required"]
RerankerTemplate = Literal["auto", "lychee", "qwen3-vl"]
RemoteQuery = Literal["text", "document", "multimodal"]
RemoteApi = Literal["rerank", "score", "tei"]
RemoteInstruction = Literal["none", "template_kwargs"]
SpoolOnError = Literal["503", "hold", "memory"]


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/guard.db"
    """SQLAlchemy URL of the decision log (SQLite file by default; PostgreSQL in production)."""
    redis_url: str | None = None
    """Redis URL for the score cache; unset means an in-process LRU."""
    scorer: ScorerName = "bundled"
    """Scorer backend: "bundled" (the default), "reranker", "clip" or "remote"."""
    scorer_threads: int = 1
    """CPU threads the scorer may use."""
    reranker_model: str | None = None
    """Qwen-VL yes/no reranker (scorer "reranker"): a checkpoint directory or a hub id."""
    reranker_max_pixels: int = 1280 * 28 * 28
    """Largest photo the reranker sees (width x height); bigger ones are shrunk first."""
    reranker_batch_size: int = 8
    """(query, reply) pairs per forward pass of the reranker."""
    reranker_template: RerankerTemplate = "auto"
    """Prompt template: "auto" (by model type), "lychee" or "qwen3-vl"."""
    clip_model: str | None = None
    """CLIP / Chinese-CLIP / SigLIP checkpoint (scorer "clip"): a directory or a hub id."""
    model_device: str = "auto"
    """Device of the reranker / clip model: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    model_calibration: str | None = None
    """Score-map JSON for the reranker, clip or remote scorer; unset: the packaged one."""
    remote_url: str | None = None
    """Base URL of the rerank server (scorer "remote"), e.g. http://gpu-1:8000/v1; /rerank is appended."""
    remote_model: str | None = None
    """Model name sent to the rerank server."""
    remote_timeout_s: float = 5.0
    """Deadline for one rerank request (all retries together stay within the score timeout)."""
    remote_api_key: str | None = None
    """Sent to the rerank server as Authorization: Bearer ..."""
    remote_retries: int = 2
    """Retries of a rerank request after a connection error, timeout, 429 or 5xx."""
    remote_query: RemoteQuery = "text"
    """Where the question and photo go (guard/scoring/remote.py): "text" (question + photo text as the
    query), "document" (photo + question as the document, the draft as the query) or "multimodal"
    (``score`` only: photo + question as the query, as the in-process reranker)."""
    remote_api: RemoteApi = "rerank"
    """Request shape: "rerank" (vLLM, Infinity, Jina, Cohere), "score" (vLLM's /score) or "tei"
    (text-embeddings-inference)."""
    remote_instruction: RemoteInstruction = "none"
    """Whether the policy's scoring instruction is sent: "none", or "template_kwargs" (``rerank`` /
    ``score``: ``"chat_template_kwargs": {"instruction": ...}`` for vLLM's score template, vLLM with
    vllm-project/vllm#42412 and a template that reads ``instruction``; then ``instruction_used`` is true)."""
    score_timeout_s: float = 10.0
    """Deadline for one scoring call; past it the policy's on_error action applies."""
    score_batch_size: int = 32
    """Most (question, reply) pairs scored in one micro-batch; 1 scores requests one at a time."""
    score_batch_wait_ms: float = 0.0
    """How long a scoring request waits for others to share its batch when the model is idle (0: none)."""
    ocr: str = "on"
    """Read the text in photos (OCR): "on" or "off"."""
    ocr_budget_s: float = 3.0
    """Time budget for reading a photo, from its arrival; past it the photo is scored without its text."""
    ocr_threads: int = 2
    """CPU threads the OCR model may use."""
    ocr_max_pending: int = 8
    """Photos being read or waiting to be read at once; more are scored without their text."""
    cache_ttl_s: int = 7 * 24 * 3600
    """How long a cached score lives."""
    cache_size: int = 10_000
    """Entries kept by the in-process LRU (when no Redis URL is set)."""
    redis_timeout_s: float = 0.05
    """Socket timeout for Redis calls: a dead or hung Redis costs at most about this much."""
    local_cache_size: int = 10_000
    """Scores also kept in process in front of Redis (0: none); a hit skips the Redis round trip."""
    sql_timeout_s: float = 2.0
    """Deadline for a SQL lookup on a request's path (policy, API key); past it the last answer stands."""
    max_body_bytes: int = 10 * 1024 * 1024
    """Largest accepted request body, enforced while reading."""
    body_timeout_s: float = 30.0
    """Deadline for receiving a whole request body (a slow upload past it gets 408); ``guard serve``
    closes any connection whose body has not arrived 2 s after it, on every route."""
    header_timeout_s: float = 10.0
    """``guard serve``: deadline for a request's line and headers, from the connection opening (or
    the previous response); past it the client gets 408 and the connection is closed."""
    max_header_bytes: int = 16 * 1024
    """``guard serve``: largest request line + headers; a bigger one gets 431 and is not read on."""
    max_connections: int = 1000
    """``guard serve``: most open client connections (lowered to leave 128 file descriptors free);
    past it the connection waiting longest for its headers is closed to make room."""
    image_retention_days: float = 30.0
    """How long a photo is kept (registered with POST /v1/images, or of a case) after it was last
    stored; past it, its id is refused (410) and it is deleted, unless its case is still pending.
    0: kept for ever."""
    max_image_pixels: int = 40_000_000
    """Largest accepted image (width x height), checked before decoding pixels."""
    max_image_scans: int = 100
    """Most scans in a JPEG (a progressive JPEG's decoding time grows with them); more: 422."""
    max_image_decoded_bytes: int = 256 * 1024 * 1024
    """Most memory decoding one photo may take (estimated from its header, before decoding); more: 413."""
    image_decode_threads: int = 2
    """Threads of the image decoder's own pool (photos decoded at once)."""
    image_decode_max_pending: int = 16
    """Photos decoding or waiting for a decoder thread at once; one more is refused (503)."""
    image_decode_timeout_s: float = 5.0
    """Deadline for decoding one photo, from its arrival; past it: 422 (503 if it never started)."""
    max_question_chars: int = 4_000
    max_reply_chars: int = 8_000
    max_candidates: int = 16
    host: str = "127.0.0.1"
    port: int = 8000
    followup_response_time_zh: str = "2小时"
    """The response time promised in follow-ups (zh)."""
    followup_response_time_en: str = "2 hours"
    """The response time promised in follow-ups (en)."""
    log_queue_size: int = 10_000
    """Decisions waiting to be written to SQL; past it, requests wait for the writer (nothing is dropped)."""
    log_batch_size: int = 200
    """Decisions written to SQL per transaction."""
    log_linger_ms: float = 20.0
    """How long the writer waits for a batch to fill when few decisions wait (fewer, cheaper writes)."""
    spool_dir: str | None = "var/spool"
    """Durable local journal of decisions on their way to SQL (fsync'd before the response); empty: none."""
    spool_on_error: SpoolOnError = "503"
    """When a decision cannot be appended to the spool (disk full or failing): "503" answers 503
    (nothing is answered that is not durable), "hold" holds the reply (the policy's on_error action,
    its holding message; the decision kept in memory, marked ``durable: false``), "memory" answers
    as decided and keeps the decision in memory only (marked ``durable: false``)."""
    scorer_breaker_failures: int = 5
    """Consecutive scorer failures (errors, timeouts, NaN) that open the scorer's circuit breaker."""
    scorer_breaker_cooldown_s: float = 10.0
    """While the scorer's breaker is open, requests take on_error at once; then one request probes."""
    auth: AuthMode = "auto"
    """API keys: "auto" (required unless serving on loopback with no key yet) or "required"."""
    upstream_url: str | None = None
    """Base URL of the OpenAI-compatible model server the proxy forwards to (e.g. http://host:8001/v1)."""
    upstream_api_key: str | None = None
    """API key sent upstream; unset: the client's Authorization is passed on unless it is a guard key."""
    upstream_timeout_s: float = 60.0
    """Deadline for one upstream chat completion, streaming included."""
    upstream_max_bytes: int = 10 * 1024 * 1024
    """Largest upstream response the proxy reads (a bigger one is a 502)."""
    image_fetch_allow_hosts: str = ""
    """Comma-separated hosts the proxy may fetch http(s) image URLs from ("*.example.com" for subdomains)."""
    image_fetch_timeout_s: float = 5.0
    """Deadline for fetching one image URL."""
    webhook_url: str | None = None
    """Where escalations, reviews and supervisors' outcomes are POSTed; unset: no webhook."""
    webhook_secret: str | None = None
    """HMAC-SHA256 key that signs every webhook delivery."""
    webhook_timeout_s: float = 5.0
    """Deadline for one webhook delivery attempt."""
    webhook_max_attempts: int = 8
    """Attempts per webhook delivery before it is marked failed."""
    webhook_backoff_s: float = 2.0
    """Delay before the first retry; doubled for each further one (capped at one hour)."""
    admin_case_url: str = "http://127.0.0.1:8000/admin/cases/{escalation_id}"
    """Link to a case in the admin page, sent in webhooks; {decision_id} and {escalation_id} are filled in."""
    metrics_key: str | None = None
    """When set, /metrics and /readyz answer only requests with ``Authorization: Bearer <key>``
    (401 otherwise); unset, they are open to anyone who reaches the port. /healthz stays open."""
    secret_key: str | None = None
    """Signs admin session cookies; unset: one is generated once and kept in var/secret_key."""
    session_ttl_s: int = 8 * 3600
    """How long an admin sign-in lasts."""

    def __post_init__(self) -> None:
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("GUARD_WEBHOOK_SECRET is required when GUARD_WEBHOOK_URL is set")

    def validate(self) -> None:
        """Refuse a fixed-value setting outside its values (ConfigError naming the variable)."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            allowed = choices(hints[f.name])
            value = getattr(self, f.name)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"GUARD_{f.name.upper()}={value!r} is not one of {', '.join(allowed)}")

    def response_time(self, locale: str) -> str:
        """The response time a follow-up promises in ``locale`` (the zh one for "zh", else the en one)."""
        return self.followup_response_time_zh if locale == "zh" else self.followup_response_time_en

    def response_times(self) -> dict[str, str]:
        """The promised response time of each locale, for pages that show both."""
        return {locale: self.response_time(locale) for locale in ("zh", "en")}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from GUARD_<FIELD> variables (e.g. GUARD_DATABASE_URL), then apply overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("GUARD_" + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings


_ZERO_ALLOWED = frozenset({"score_batch_wait_ms", "log_linger_ms", "image_retention_days"})
"""Durations where 0 means "do not wait" (image_retention_days: "keep for ever"); every other
duration must be positive."""


def choices(hint: Any) -> tuple[str, ...] | None:
    """The values a ``Literal`` setting takes (None for any other type)."""
    return get_args(hint) if get_origin(hint) is Literal else None


def _parse(name: str, type_name: str, raw: str) -> Any:
    """A variable's text as its field's type (a ``Literal`` field's text as is: ``validate`` checks it)."""
    var = "GUARD_" + name.upper()
    if "None" in type_name and raw.strip() == "":
        return None
    try:
        if type_name.startswith("int"):
            value: Any = int(raw)
            if value < 0:
                raise ValueError
            return value
        if type_name.startswith("float"):
            value = float(raw)
            if not (value > 0 or (value == 0 and name in _ZERO_ALLOWED)):
                raise ValueError
            return value
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid non-negative number") from None
    return raw


def documented_variables() -> list[tuple[str, str, Any]]:
    """(variable, type, default) for every setting; a test keeps docs/configuration.md whole with it."""
    return [("GUARD_" + f.name.upper(), str(f.type), f.default) for f in fields(Settings)]


__all__ = ["Settings", "SettingsError", "documented_variables"]
