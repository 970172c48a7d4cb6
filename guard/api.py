"""The check API: parse and validate, call the pipeline, shape the JSON.

Every bad input is a 4xx with ``{"error": {"code": ..., "message": ...}}`` that says what
is wrong. Bodies are limited while they are read, not after.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guard.body import parse_json, read_body, replay
from guard.calibration import scorer_version_with
from guard.edge_text import LIMITS, checked
from guard.errors import BadRequest, InvalidField, NotFound, Unavailable
from guard.images import DecodedImage, decode_base64
from guard.keys import request_channel, sees_channel
from guard.pipeline import CheckRequest
from guard.runtime import Runtime, runtime
from guard.settings import Settings


async def parse_fields(request: Request, settings: Settings) -> tuple[dict[str, Any], bytes | None]:
    """The request's fields and, for multipart, the bytes of its ``image`` file."""
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _parse_multipart(request, body, settings)
    doc = parse_json(body, "the body (send JSON or multipart/form-data)")
    if not isinstance(doc, dict):
        raise BadRequest("invalid_json", "the body must be a JSON object")
    return doc, None


async def _parse_multipart(
    request: Request, body: bytes, settings: Settings
) -> tuple[dict[str, Any], bytes | None]:
    boundary = parse_options_header(request.headers.get("content-type"))[1].get(b"boundary")
    if boundary and not (body.startswith(b"--" + boundary + b"--") or b"\r\n--" + boundary + b"--" in body):
        # A cut-off body would parse "successfully" without its last part (the photo, silently dropped).
        raise BadRequest("invalid_multipart", "the multipart body is cut off: no closing boundary")
    replayed = Request(request.scope, replay(body))
    try:
        form = await replayed.form(max_files=1, max_fields=32, max_part_size=settings.max_body_bytes)
    except MultiPartException as exc:
        raise BadRequest("invalid_multipart", f"the multipart body is malformed: {exc.message}") from None
    except HTTPException as exc:  # what Starlette raises instead when the scope has an app
        raise BadRequest("invalid_multipart", f"the multipart body is malformed: {exc.detail}") from None
    try:
        fields: dict[str, Any] = {}
        image: bytes | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image":
                    raise BadRequest(
                        "unexpected_file",
                        f"file field {key!r} is not expected; send the photo as 'image'",
                    )
                image = await value.read()
            elif key == "candidates":
                fields.setdefault("candidates", []).append(value)
            else:
                fields[key] = value
        return fields, image
    finally:
        await form.close()


def _channel(request: Request, fields: Mapping[str, Any]) -> str:
    """The request's channel: the API key's when a key was used (a key cannot act for another channel)."""
    return request_channel(request.scope, _text(fields, "channel", limit=LIMITS["channel"], required=False))


def _text(fields: Mapping[str, Any], name: str, *, limit: int, required: bool) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise InvalidField("missing_field", f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise InvalidField("wrong_type", f"'{name}' must be a string, not {type(value).__name__}")
    return checked(value, f"'{name}'", limit=limit)


async def _image(
    fields: Mapping[str, Any], upload: bytes | None, settings: Settings, rt: Runtime
) -> DecodedImage | None:
    raw = fields.get("image")
    data: bytes | None = upload
    if raw is not None and upload is None:
        if isinstance(raw, str):  # multipart text field or a bare base64 string
            raw = {"data": raw}
        if not isinstance(raw, dict) or len(raw) != 1 or not ({"data", "id"} & raw.keys()):
            raise InvalidField("wrong_type", '\'image\' must be {"data": <base64>} or {"id": <image_id>}')
        if "id" in raw:
            return await rt.registered_image(raw["id"])
        if not isinstance(raw["data"], str):
            raise InvalidField("wrong_type", "'image.data' must be a base64 string")
        data = _decode_b64(raw["data"], settings)
    if data is None:
        return None
    return await rt.pipeline.images.decode(data)  # its own bounded pool, under a deadline


def _decode_b64(text: str, settings: Settings) -> bytes:
    try:
        return decode_base64(text, max_bytes=settings.max_body_bytes)
    except binascii.Error as exc:
        raise InvalidField("invalid_base64", f"'image.data' is not valid base64: {exc}") from None


async def check_request(request: Request) -> CheckRequest:
    rt = runtime(request)
    settings = rt.settings
    fields, upload = await parse_fields(request, settings)
    question = _text(fields, "question", limit=settings.max_question_chars, required=True)
    reply = _text(fields, "reply", limit=settings.max_reply_chars, required=True)
    assert question is not None and reply is not None
    channel = _channel(request, fields)
    conversation_id = _text(fields, "conversation_id", limit=LIMITS["conversation_id"], required=False)
    locale = _text(fields, "locale", limit=16, required=False)
    candidates = fields.get("candidates") or []
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise InvalidField("wrong_type", "'candidates' must be a list of strings")
    if len(candidates) > settings.max_candidates:
        raise InvalidField("too_many_candidates", f"at most {settings.max_candidates} candidates are allowed")
    for i, c in enumerate(candidates):
        if len(c) > settings.max_reply_chars:
            raise InvalidField(
                "too_long", f"candidate #{i + 1} is over {settings.max_reply_chars} characters"
            )
        checked(c, f"candidate #{i + 1}")
    if not reply.strip():
        raise InvalidField("empty_reply", "'reply' is empty: there is nothing to guard")
    image = await _image(fields, upload, settings, rt)
    if not question.strip() and image is None:
        raise InvalidField("empty_question", "'question' may be empty only when an image is given")
    return CheckRequest(
        question=question,
        reply=reply,
        channel=channel,
        conversation_id=conversation_id,
        locale=locale,
        image=image,
        candidates=tuple(candidates),
    )


async def guard_endpoint(request: Request) -> Response:
    req = await check_request(request)
    result = await runtime(request).pipeline.check(req)
    return JSONResponse(result.to_json())


async def images_endpoint(request: Request) -> Response:
    rt = runtime(request)
    fields, upload = await parse_fields(request, rt.settings)
    image = await _image(fields, upload, rt.settings, rt)
    if image is None:
        raise InvalidField("missing_field", "'image' is required")
    rt.pipeline.start_reading(image)  # read its text now, while the chatbot writes its reply
    await rt.register_image(image)
    return JSONResponse(
        {"image_id": image.sha256, "format": image.format, "width": image.width, "height": image.height},
        status_code=201,
    )


async def decision_endpoint(request: Request) -> Response:
    rt = runtime(request)
    decision_id = request.path_params["decision_id"]
    found = await rt.find_decision(decision_id)
    if found is None or not sees_channel(request.scope, found.row.channel):  # another channel's: not there
        raise NotFound("not_found", f"no decision {decision_id!r} (it may still be on its way to the log)")
    row, item = found.row, found.queue_item
    audit = None if item is None else item.audit_json()
    if item is not None and item.is_audit:
        item = None  # sent as the guard decided; the audit item only says how good it was
    return JSONResponse(
        {
            "decision_id": row.id,
            "created_at": _utc(row.created_at).isoformat(),
            "conversation_id": row.conversation_id,
            "channel": row.channel,
            "action": row.action,
            "score": row.score,
            "band": row.band,
            "state": "sent" if item is None else item.state,
            "reply": row.final_reply if item is None else item.final_reply,
            "draft": row.draft,
            "follow_up": row.follow_up,
            "holding_message": row.holding_message,
            "issue_phrase": row.issue_phrase,
            "issue_kind": row.issue_kind,
            "uncertain": row.uncertain,
            "uncertain_reason": row.uncertain_reason,
            "escalation_id": None if item is None else item.id,
            "policy": {"channel": row.policy_channel, "version": row.policy_version},
            "scorer": {"name": row.scorer_name, "version": row.scorer_version},
            "inputs_used": list(row.inputs_used),
            "instruction_used": row.instruction_used,
            "cached": row.cached,
            "degraded": row.degraded,
            "audit": audit,
            "reason": row.reason,
            "durable": row.durable,
        }
    )


def _utc(moment: datetime) -> datetime:
    """A stored time with its offset: SQLite hands back the UTC time it stored without one (an
    RFC 3339 ``date-time`` needs it; PostgreSQL keeps it)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def rerank_endpoint(request: Request) -> Response:
    """The seed tool's batch re-ranking: a query (question + optional image) and N documents, scored
    as ``POST /v1/guard`` scores drafts on the channel (its instruction unless one is given, its
    score map in force)."""
    rt = runtime(request)
    settings = rt.settings
    fields, upload = await parse_fields(request, settings)
    query = _text(fields, "query", limit=settings.max_question_chars, required=True)
    assert query is not None
    documents = fields.get("documents")
    if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
        raise InvalidField("wrong_type", "'documents' must be a non-empty list of strings")
    if len(documents) > 64:
        raise InvalidField("too_many_documents", "at most 64 documents are allowed")
    if any(len(d) > settings.max_reply_chars for d in documents):
        raise InvalidField("too_long", f"a document is over {settings.max_reply_chars} characters")
    channel = _channel(request, fields)
    instruction = _text(fields, "instruction", limit=2000, required=False)
    image = await _image(fields, upload, settings, rt)
    guard = rt.pipeline
    # The channel's policy (its instruction) and score map, as POST /v1/guard on the channel uses them.
    policy, channel_map = await guard.channel_rules(channel)
    scored, failed = await guard.score_texts(
        query, image, documents, instruction or policy.instruction, calibration=channel_map
    )
    if failed:
        raise Unavailable("scorer_unavailable", "the scorer could not score these documents")
    order = sorted(range(len(documents)), key=lambda i: scored[i].score or 0.0, reverse=True)
    scorer = guard.scoring.scorer
    return JSONResponse(
        {
            "results": [
                {"index": i, "document": documents[i], "relevance_score": round(scored[i].score or 0.0, 4)}
                for i in order
            ],
            "scorer": {"name": scorer.name, "version": scorer_version_with(scorer.version, channel_map)},
        }
    )


routes = [
    Route("/v1/guard", guard_endpoint, methods=["POST"]),
    Route("/v1/images", images_endpoint, methods=["POST"]),
    Route("/v1/decisions/{decision_id}", decision_endpoint, methods=["GET"]),
    Route("/v1/rerank", rerank_endpoint, methods=["POST"]),
]
