"""vLLM's scoring requests as vLLM defines them, written here as test data (no vLLM code).

Derived from vllm-project/vllm ``vllm/entrypoints/pooling/score/protocol.py`` (``RerankRequest``,
``ScoreQueriesDocumentsRequest``; commit 1fff4ef8), ``pooling/base/protocol.py`` (the request mixins;
020638a6) and ``score/utils.py`` (``ScoreMultiModalParam``, ``validate_score_input``,
``_validate_score_input_lens``; 7fbd19b8). The models are stricter than vLLM in one way: fields
vLLM does not define are refused (vLLM accepts them with a warning and ignores them), so a request
that passes here means exactly what it says to vLLM.

``pairs`` is how vLLM turns a request into (query, document) inputs: a string is one input; a list
is one input per element; a bare ``{"content": [...]}`` (not in a list) is one input *per content
part*; one query is paired with every document, else queries and documents pair 1:1.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class TextPart(_Strict):
    type: Literal["text"]
    text: str


Part = Annotated[ImagePart | TextPart, Field(discriminator="type")]


class MultiModal(_Strict):
    """ScoreMultiModalParam: ``{"content": [parts]}``."""

    content: list[Part]


ScoreInput = str | MultiModal
ScoreInputs = ScoreInput | list[ScoreInput]


class _PoolingRequest(_Strict):
    """PoolingBasicRequestMixin and ClassifyRequestMixin (base/protocol.py)."""

    model: str | None = None
    user: str | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None
    padding: Literal["max_length", "do_not_pad"] | None = None
    truncation_side: Literal["left", "right"] | None = None
    request_id: str | None = None
    priority: int = 0
    mm_processor_kwargs: dict[str, object] | None = None
    cache_salt: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    use_activation: bool | None = None


class RerankRequest(_PoolingRequest):
    """POST /rerank, /v1/rerank, /v2/rerank."""

    query: ScoreInput
    documents: ScoreInputs
    top_n: int = 0


class ScoreRequest(_PoolingRequest):
    """POST /score, /v1/score (the queries/documents form)."""

    queries: ScoreInputs
    documents: ScoreInputs


Input = str | list[ImagePart | TextPart]


def inputs(data: ScoreInputs) -> list[Input]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, MultiModal):
        return [[part] for part in data.content]  # a bare multimodal param: one input per part
    return [d if isinstance(d, str) else list(d.content) for d in data]


def pairs(queries: ScoreInputs, documents: ScoreInputs) -> list[tuple[Input, Input]]:
    """The (query, document) inputs vLLM scores, in the order of its answer's indexes."""
    q, d = inputs(queries), inputs(documents)
    if len(q) > 1 and len(q) != len(d):
        raise ValueError("Input lengths must be either 1:1, 1:N or N:N")
    if not q or not d:
        raise ValueError("At least one text element must be given")
    for one in q + d:
        if isinstance(one, list) and sum(isinstance(p, ImagePart) for p in one) > 1:
            raise ValueError("Only one multi-modal item is supported")
    return list(zip(q * len(d) if len(q) == 1 else q, d, strict=True))
