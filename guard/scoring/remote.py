"""Scores from an inference server's scoring API: vLLM, Infinity, TEI (and Jina / Cohere-style servers).

``GUARD_REMOTE_API`` picks the API and ``GUARD_REMOTE_QUERY`` where the question and the photo go
(the layouts and which server and model each suits are in docs/scoring.md):

- ``rerank`` (vLLM, Infinity, Jina, Cohere): ``POST {url}/rerank`` ``{"model", "query", "documents"}``,
  answered by ``{"results": [{"index", "relevance_score"}]}``;
- ``score`` (vLLM): ``POST {url}/score`` ``{"model", "queries", "documents"}``, answered by
  ``{"data": [{"index", "score"}]}``;
- ``tei`` (Hugging Face text-embeddings-inference): ``POST {url}/rerank`` ``{"query", "texts"}``,
  answered by ``[{"index", "score"}]``.

Layouts: ``text`` sends the question (and the text read from the photo) as the query and the replies
as the documents; the photo is not sent. ``document`` puts the photo and the question in the
document slot, in vLLM's multimodal form ``{"content": [{"type": "image_url", ...}, {"type": "text",
...}]}``, and the reply in the query slot (vLLM reads multimodal documents; a multimodal rerank
*query* is split by vLLM into one query per content part). ``multimodal`` (``score`` only) keeps the
roles of the in-process reranker: the query is ``[{"content": [photo, question]}]`` (wrapped in a
list, so vLLM reads both parts as one input) and the replies are the documents. When the photo is
sent, the text read from it is not (the served model reads the photo, as the in-process reranker
does). Photos go as JPEG data URLs.

``GUARD_REMOTE_INSTRUCTION``: ``none`` (the default) sends no instruction; ``template_kwargs``
(``rerank`` and ``score``) adds ``"chat_template_kwargs": {"instruction": <the item's instruction>}``
to every request, which vLLM (since vllm-project/vllm#42412, merged 2026-05-14) passes to the score
template the server was started with; a template that reads ``instruction`` (vLLM's
``qwen3_vl_reranker.jinja``, the guard's in docs/scoring.md) then writes it into the prompt, so
``instruction_used`` is True. Items with different instructions never share a request. An older vLLM
accepts the field and ignores it (its request models allow unknown fields): check the server first.

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

from guard.errors import ScorerError
from guard.scoring.base import ModelScorer, ScoreInput, cap_pixels
from guard.scoring.score_map import ScoreMap, load_score_map, logit

if TYPE_CHECKING:
    from PIL import Image

    from guard.settings import Settings

FEATURES = ("relevance", "relevance_logit")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
IMAGE_MAX_PIXELS = 1280 * 28 * 28
APIS = ("rerank", "score", "tei")
LAYOUTS = ("text", "document", "multimodal")
INSTRUCTION_MODES = ("none", "template_kwargs")
PATHS = {"rerank": "/rerank", "score": "/score", "tei": "/rerank"}


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
    instruction: str = "none"
    """"none" or "template_kwargs" (send ``chat_template_kwargs.instruction``, vLLM)."""


def endpoint_url(url: str, api: str = "rerank") -> str:
    """The URL to POST to: ``url`` itself when it already ends with the API's path, else ``url`` + path."""
    u = url.strip().rstrip("/")
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ScorerError(f"GUARD_REMOTE_URL={url!r} must be an http(s) URL, e.g. http://gpu-1:8000/v1")
    path = PATHS[api]
    return u if u.endswith(path) else u + path


def image_data_url(img: Image.Image, max_pixels: int = IMAGE_MAX_PIXELS) -> str:
    buf = io.BytesIO()
    cap_pixels(img.convert("RGB"), max_pixels).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def check_layout(api: str, query: str, instruction: str = "none") -> None:
    """ScorerError naming the setting when the API, the layout and the instruction do not go together."""
    if api not in APIS:
        raise ScorerError(f"GUARD_REMOTE_API={api!r}: use {', '.join(APIS)}")
    if query not in LAYOUTS:
        raise ScorerError(f"GUARD_REMOTE_QUERY={query!r}: use {', '.join(LAYOUTS)}")
    if instruction not in INSTRUCTION_MODES:
        raise ScorerError(f"GUARD_REMOTE_INSTRUCTION={instruction!r}: use {', '.join(INSTRUCTION_MODES)}")
    if api == "tei" and instruction != "none":
        raise ScorerError(
            f"GUARD_REMOTE_INSTRUCTION={instruction} needs GUARD_REMOTE_API=rerank or score (vLLM): "
            "TEI's rerank request has no field for it"
        )
    if api == "tei" and query != "text":
        raise ScorerError(f"GUARD_REMOTE_QUERY={query} needs GUARD_REMOTE_API=rerank or score (vLLM)")
    if api == "rerank" and query == "multimodal":
        raise ScorerError(
            "GUARD_REMOTE_QUERY=multimodal needs GUARD_REMOTE_API=score: vLLM's rerank API splits a "
            "multimodal query into one query per part; with rerank use GUARD_REMOTE_QUERY=document"
        )


class RemoteScorer(ModelScorer):
    """The scoring API of a remote inference server, with retries, timeouts and a pooled client.

    The query and document slots hold the question, the photo and the reply; the scoring instruction
    goes only in ``chat_template_kwargs`` with ``GUARD_REMOTE_INSTRUCTION=template_kwargs``, and
    ``instruction_used`` says whether it was sent."""

    sees_image = True
    reads_instruction = False
    image_text_with_image = False

    def __init__(
        self,
        cfg: RemoteConfig,
        score_map: ScoreMap,
        *,
        transport: httpx2.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        check_layout(cfg.api, cfg.query, cfg.instruction)
        self._cfg = cfg
        self._endpoint = endpoint_url(cfg.url, cfg.api)
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
        # Sending the instruction is part of the version: a score cached without it (and its
        # instruction_used) is not served once it is sent, nor the other way round.
        sends = "+instruction" if cfg.instruction == "template_kwargs" else ""
        self._version = f"remote:{cfg.api}:{host}:{cfg.model or 'default'}:{cfg.query}{sends}:{score_map.id}"

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
            instruction=settings.remote_instruction,
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

    def uses_image(self, item: ScoreInput) -> bool:
        return self._cfg.query != "text" and item.image is not None

    def uses_instruction(self, item: ScoreInput) -> bool:
        return self._cfg.instruction == "template_kwargs"

    def instruction_text(self, item: ScoreInput) -> str:
        """The instruction sent for ``item`` ("" when none is sent)."""
        return item.instruction.strip() if self.uses_instruction(item) else ""

    def _slot(self, item: ScoreInput, text: str) -> str | dict[str, Any]:
        """``text``, or with the photo vLLM's multimodal form of photo + text (one input)."""
        if not self.uses_image(item):
            return text
        assert item.image is not None
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(item.image)}}
        ]
        if text:
            parts.append({"type": "text", "text": text})
        return {"content": parts}

    def group_key(self, item: ScoreInput) -> tuple[str, int, str]:
        """Items with the same key share one request: the same query slot and the same instruction
        sent (one request carries one instruction)."""
        if self._cfg.query == "document":
            return (self.reply_text(item), 0, self.instruction_text(item))
        image = id(item.image) if self.uses_image(item) else 0
        return (self.query_text(item), image, self.instruction_text(item))

    def request_body(self, group: Sequence[ScoreInput]) -> dict[str, Any]:
        """One request for items that share a group key; document i is item i's."""
        first = group[0]
        query: str | dict[str, Any]
        documents: list[str | dict[str, Any]]
        if self._cfg.query == "document":
            query = self.reply_text(first)
            documents = [self._slot(it, self.query_text(it)) for it in group]
        else:
            query = self._slot(first, self.query_text(first))
            documents = [self.reply_text(it) for it in group]
        body: dict[str, Any]
        if self._cfg.api == "tei":
            body = {"query": query, "texts": documents, "raw_scores": False, "truncate": True}
        elif self._cfg.api == "score":
            body = {"queries": [query] if isinstance(query, dict) else query, "documents": documents}
        else:
            body = {"query": query, "documents": documents}
        if self._cfg.model and self._cfg.api != "tei":
            body["model"] = self._cfg.model
        if self.uses_instruction(first):
            # vLLM hands these to the score template (vllm/entrypoints/pooling/scoring/protocol.py,
            # ScoringRequestMixin.chat_template_kwargs), where ``instruction`` is the template's variable.
            body["chat_template_kwargs"] = {"instruction": self.instruction_text(first)}
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
        """The server's relevance score per item; items sharing a group key share a request."""
        groups: dict[tuple[str, int, str], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(self.group_key(it), []).append(i)
        out: list[float] = [0.0] * len(items)
        for members in groups.values():
            data = self._post(self.request_body([items[i] for i in members]))
            for i, s in zip(members, self.parse_scores(data, len(members)), strict=True):
                out[i] = s
        return out

    def scores(self, items: Sequence[ScoreInput]) -> list[float]:
        return [
            self._map.score("default", {"relevance": r, "relevance_logit": logit(r)})
            for r in self.raw_scores(items)
        ]
