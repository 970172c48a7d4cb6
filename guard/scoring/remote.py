"""Scores from an inference server's rerank API: vLLM, Infinity, TEI (and Jina / Cohere-style servers).

``POST {GUARD_REMOTE_URL}/rerank`` with the question as the query and the draft replies as the
documents. Pairs that share a query (a reply and its candidates) go in one request. Two request
shapes:

- ``GUARD_REMOTE_API=rerank`` (vLLM, Infinity, Jina, Cohere): ``{"model", "query", "documents"}``
  answered by ``{"results": [{"index", "relevance_score"}]}``. With ``GUARD_REMOTE_QUERY=multimodal``
  the query is vLLM's multimodal form, ``{"content": [{"type": "image_url", ...}, {"type": "text", ...}]}``,
  with the photo as a JPEG data URL, for servers running a model that sees it (e.g. lychee-rerank-mm,
  Qwen3-VL-Reranker or jina-reranker-m0 on vLLM).
- ``GUARD_REMOTE_API=tei`` (Hugging Face text-embeddings-inference): ``{"query", "texts"}`` answered by
  ``[{"index", "score"}]``.

One pooled HTTP client per scorer (keep-alive, bounded connections); each attempt has its own
timeout; connection errors, timeouts, 429 and 5xx are retried with exponential backoff; any other
answer, or one that does not fit the request, is a ScorerError (so the policy's on_error applies).
The relevance score goes through a versioned score map (``calibration/remote.json``): features
``relevance`` (the number as the server gives it) and ``relevance_logit`` (its logit, when it is a
probability).
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2

from guard.scoring.base import ScoreInput, ScorerError, ScoreResult
from guard.scoring.score_map import ScoreMap, load_score_map, logit

if TYPE_CHECKING:
    from PIL import Image

    from guard.settings import Settings

FEATURES = ("relevance", "relevance_logit")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_TEXT_CHARS = 4000
IMAGE_MAX_PIXELS = 1280 * 28 * 28


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    url: str
    model: str | None = None
    timeout_s: float = 5.0
    api_key: str | None = None
    retries: int = 2
    query: str = "text"
    api: str = "rerank"
    calibration: str | None = None
    backoff_s: float = 0.1
    max_connections: int = 32


def rerank_endpoint(url: str) -> str:
    u = url.strip().rstrip("/")
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ScorerError(f"GUARD_REMOTE_URL={url!r} must be an http(s) URL, e.g. http://gpu-1:8000/v1")
    return u if u.endswith("/rerank") else u + "/rerank"


def image_data_url(img: Image.Image, max_pixels: int = IMAGE_MAX_PIXELS) -> str:
    from guard.scoring.reranker import cap_pixels

    buf = io.BytesIO()
    cap_pixels(img.convert("RGB"), max_pixels).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class RemoteScorer:
    """The rerank API of a remote inference server, with retries, timeouts and a pooled client."""

    def __init__(
        self,
        cfg: RemoteConfig,
        score_map: ScoreMap,
        *,
        transport: httpx2.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if cfg.query not in ("text", "multimodal"):
            raise ScorerError(f"GUARD_REMOTE_QUERY={cfg.query!r}: use text or multimodal")
        if cfg.api not in ("rerank", "tei"):
            raise ScorerError(f"GUARD_REMOTE_API={cfg.api!r}: use rerank or tei")
        if cfg.api == "tei" and cfg.query == "multimodal":
            raise ScorerError("GUARD_REMOTE_QUERY=multimodal needs GUARD_REMOTE_API=rerank (vLLM's form)")
        self._cfg = cfg
        self._endpoint = rerank_endpoint(cfg.url)
        self._map = score_map
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self._client = httpx2.Client(
            headers=headers,
            timeout=httpx2.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 3.0)),
            limits=httpx2.Limits(
                max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections
            ),
            transport=transport,
        )
        host = urlsplit(self._endpoint).netloc
        self._version = f"remote:{cfg.api}:{host}:{cfg.model or 'default'}:{cfg.query}:{score_map.id}"

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteScorer:
        if not settings.remote_url:
            raise ScorerError("GUARD_REMOTE_URL is not set: give the rerank server's base URL")
        cfg = RemoteConfig(
            url=settings.remote_url,
            model=settings.remote_model,
            timeout_s=settings.remote_timeout_s,
            api_key=settings.remote_api_key,
            retries=settings.remote_retries,
            query=settings.remote_query,
            api=settings.remote_api,
            calibration=settings.model_calibration,
        )
        return cls(cfg, load_score_map(cfg.calibration, backend="remote", needs={"default": FEATURES}))

    @property
    def name(self) -> str:
        return "remote"

    @property
    def version(self) -> str:
        return self._version

    def close(self) -> None:
        self._client.close()

    # -- requests ---------------------------------------------------------------------------

    def _query_text(self, item: ScoreInput) -> str:
        q = item.question.strip()
        if item.image_text and item.image_text.strip():
            q = f"{q}\n{item.image_text.strip()}".strip()
        return q[:MAX_TEXT_CHARS]

    def _sends_image(self, item: ScoreInput) -> bool:
        return self._cfg.query == "multimodal" and item.image is not None

    def inputs_used(self, item: ScoreInput) -> tuple[str, ...]:
        used = ["question"]
        if item.image_text and item.image_text.strip():
            used.append("image_text")
        if self._sends_image(item):
            used.append("image")
        return (*used, "reply")

    def request_body(self, item: ScoreInput, documents: list[str]) -> dict[str, Any]:
        text = self._query_text(item)
        if self._cfg.api == "tei":
            return {"query": text, "texts": documents, "raw_scores": False, "truncate": True}
        query: Any = text
        if self._sends_image(item):
            assert item.image is not None
            content: list[dict[str, Any]] = [
                {"type": "image_url", "image_url": {"url": image_data_url(item.image)}}
            ]
            if text:
                content.append({"type": "text", "text": text})
            query = {"content": content}
        body: dict[str, Any] = {"query": query, "documents": documents, "return_documents": False}
        if self._cfg.model:
            body["model"] = self._cfg.model
        return body

    def _post(self, body: dict[str, Any]) -> Any:
        attempts = max(0, self._cfg.retries) + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                self._sleep(self._cfg.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._client.post(self._endpoint, json=body)
            except httpx2.TimeoutException as exc:
                last = f"timed out after {self._cfg.timeout_s}s ({type(exc).__name__})"
                continue
            except httpx2.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            if resp.status_code != 200:
                raise ScorerError(
                    f"rerank server {self._endpoint} said HTTP {resp.status_code}: {resp.text[:300]}"
                )
            try:
                return resp.json()
            except ValueError as exc:
                raise ScorerError(f"rerank server {self._endpoint} sent invalid JSON: {exc}") from exc
        raise ScorerError(f"rerank server {self._endpoint} failed {attempts} time(s); last: {last}")

    @staticmethod
    def parse_scores(data: Any, n: int) -> list[float]:
        """Scores by document index from either response shape; ScorerError when it does not fit."""
        rows = data.get("results", data.get("data")) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ScorerError(f"rerank response has no results list: {str(data)[:200]}")
        scores: list[float | None] = [None] * n
        for row in rows:
            if not isinstance(row, dict):
                raise ScorerError(f"rerank result is not an object: {str(row)[:100]}")
            idx = row.get("index")
            value = row.get("relevance_score", row.get("score"))
            if not isinstance(idx, int) or not 0 <= idx < n or scores[idx] is not None:
                raise ScorerError(f"rerank result has a bad or repeated index: {idx!r}")
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ScorerError(f"rerank result {idx} has no finite score: {value!r}")
            scores[idx] = float(value)
        if any(s is None for s in scores):
            raise ScorerError(f"rerank response scored {len(rows)} of {n} documents")
        return [float(s) for s in scores if s is not None]

    def raw_scores(self, items: Sequence[ScoreInput]) -> list[float]:
        """The server's relevance score per item; items sharing (query, photo) share a request."""
        groups: dict[tuple[str, int], list[int]] = {}
        for i, it in enumerate(items):
            key = (self._query_text(it), id(it.image) if self._sends_image(it) else 0)
            groups.setdefault(key, []).append(i)
        out: list[float] = [0.0] * len(items)
        for members in groups.values():
            docs = [items[i].reply.strip()[:MAX_TEXT_CHARS] for i in members]
            data = self._post(self.request_body(items[members[0]], docs))
            for i, s in zip(members, self.parse_scores(data, len(docs)), strict=True):
                out[i] = s
        return out

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        if not items:
            return []
        try:
            raw = self.raw_scores(items)
            scores = [self._map.score("default", {"relevance": r, "relevance_logit": logit(r)}) for r in raw]
        except ScorerError:
            raise
        except Exception as exc:
            raise ScorerError(f"remote scorer failed: {type(exc).__name__}: {exc}") from exc
        return [
            ScoreResult(score=s, inputs_used=self.inputs_used(it))
            for s, it in zip(scores, items, strict=True)
        ]
