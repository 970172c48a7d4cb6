"""vLLM's scoring requests as vLLM defines them, written here as test data (no vLLM code).

Derived from vllm-project/vllm ``vllm/entrypoints/pooling/score/protocol.py`` (``RerankRequest``,
``ScoreQueriesDocumentsRequest``; commit 1fff4ef8), ``pooling/base/protocol.py`` (the request mixins;
020638a6) and ``score/utils.py`` (``ScoreMultiModalParam``, ``validate_score_input``,
``_validate_score_input_lens``; 7fbd19b8). The models are stricter than vLLM in one way: fields
vLLM does not define are refused (vLLM's ``OpenAIBaseModel`` has ``extra="allow"``: it accepts them,
logs them and ignores them; ``openai/engine/protocol.py`` at d7e52523), so a request that passes
here means exactly what it says to vLLM.

``RerankRequest`` and ``ScoreRequest`` are the requests before vllm-project/vllm#42412;
``InstructedRerankRequest`` and ``InstructedScoreRequest`` are them since (merged 2026-05-14:
``ScoringRequestMixin`` in ``pooling/scoring/protocol.py``, read at 055e47c2 under
``vllm/frontend/entrypoints/pooling/scoring/``; absent at 53158688 and 004706d8), which adds the
per-query / per-document token limits, ``instruction`` and ``chat_template_kwargs``. vLLM renders
its score template with those kwargs (``CrossEncoderIOProcessor.get_score_prompt``, scoring/
io_processor.py at 055e47c2, only when the server has a chat template): ``template_kwargs`` is
what the template is given.

``pairs`` is how vLLM turns a request into (query, document) inputs: a string is one input; a list
is one input per element; a bare ``{"content": [...]}`` (not in a list) is one input *per content
part*; one query is paired with every document, else queries and documents pair 1:1.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


RESERVED_TEMPLATE_KWARGS = frozenset({"chat_template", "tools", "tokenize"})
"""Keys ``get_score_prompt`` passes to the template renderer itself: refused in chat_template_kwargs."""


class _ScoringRequest(_PoolingRequest):
    """ScoringRequestMixin since vllm-project/vllm#42412 (scoring/protocol.py)."""

    max_tokens_per_query: Annotated[int, Field(ge=0)] = 0
    max_tokens_per_doc: Annotated[int, Field(ge=0)] = 0
    instruction: str | None = None
    """Folded into ``chat_template_kwargs["instruction"]`` unless that is given (it wins)."""
    chat_template_kwargs: dict[str, object] | None = None

    @model_validator(mode="after")
    def _no_reserved_kwargs(self) -> _ScoringRequest:
        # get_score_prompt refuses the keys it passes itself to the template renderer.
        reserved = RESERVED_TEMPLATE_KWARGS & (self.chat_template_kwargs or {}).keys()
        if reserved:
            raise ValueError(f"chat_template_kwargs contains reserved keys: {sorted(reserved)}")
        return self


class InstructedRerankRequest(_ScoringRequest):
    """POST /rerank, /v1/rerank, /v2/rerank since vllm-project/vllm#42412."""

    query: ScoreInput
    documents: ScoreInputs
    top_n: Annotated[int, Field(ge=0)] = 0


class InstructedScoreRequest(_ScoringRequest):
    """POST /score, /v1/score (the queries/documents form) since vllm-project/vllm#42412."""

    queries: ScoreInputs
    documents: ScoreInputs


def template_kwargs(req: BaseModel) -> dict[str, object]:
    """The keyword arguments vLLM renders the score template with (besides ``messages``): none
    before vllm-project/vllm#42412; since, ``chat_template_kwargs`` with a top-level
    ``instruction`` folded in (a key given in ``chat_template_kwargs`` wins)."""
    if not isinstance(req, _ScoringRequest):
        return {}
    kwargs = dict(req.chat_template_kwargs or {})
    if req.instruction is not None:
        kwargs.setdefault("instruction", req.instruction)
    return kwargs


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
