"""The OpenAPI 3.1 description of the guard's HTTP API, served at ``GET /openapi.json``.

Hand-maintained, beside the code it describes, and kept true by tests/test_openapi.py: real
responses of every route (successes and each error shape) are validated against it, and a bounded
schemathesis run against a live ``guard serve`` finds no 5xx and no response outside it.

Error responses list, per operation and status, every ``error.code`` that route can answer with
(the codes are those of guard/errors.py's tree). A leaf module: it imports nothing of the guard
but the names of values (actions, queue states, OCR statuses), so it cannot drift from them.
"""

from __future__ import annotations

from typing import Any, get_args

from guard.ocr import Status
from guard.policies import ACTIONS
from guard.tables import QUEUE_STATES

Schema = dict[str, Any]
Codes = dict[int, tuple[str, ...]]
"""Error codes by HTTP status."""

INPUTS = ("question", "reply", "image_text", "image")

EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEUlEQVR42mP8z4AdMDEMKQkAzUEBD7t4NqoAAAAASUVORK5CYII="
)
"""An 8x8 red PNG: the examples' photo."""


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


STRING: Schema = {"type": "string"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}

# -- errors ------------------------------------------------------------------------------------

AUTH: Codes = {
    401: ("unauthorized",),
    503: ("database_unavailable",),  # a key never seen while SQL does not answer
}
"""What the API-key check in front of every ``/v1/`` route may answer."""

CHANNEL: Codes = {403: ("channel_forbidden",)}
"""A key of one channel asking for another (the routes that take a ``channel``)."""

BODY: Codes = {
    400: ("invalid_json", "invalid_content_length", "client_disconnected"),
    408: ("body_timeout",),
    413: ("body_too_large",),
}
"""Reading a request body (guard/body.py)."""

FORM: Codes = {400: ("invalid_multipart", "unexpected_file")}
"""A multipart body (the check API and /v1/images)."""

IMAGE: Codes = {
    404: ("unknown_image",),
    413: ("image_too_large", "image_too_many_pixels", "image_decoded_too_large"),
    415: ("unsupported_image_format",),
    422: (
        "wrong_type",
        "invalid_base64",
        "not_an_image",
        "truncated_image",
        "empty_image",
        "image_too_many_scans",
        "image_decode_timeout",
    ),
    503: ("database_unavailable", "image_decoder_busy"),  # an image.id looked up in SQL; decoder full
}
"""A photo given inline (``image.data``) or by id (``image.id``)."""

TEXT: Codes = {422: ("missing_field", "wrong_type", "too_long", "invalid_text")}

ROUTING: Codes = {405: ("method_not_allowed",)}
"""Starlette's own answer to a method the route does not take."""

ERRORS: dict[str, list[Codes]] = {
    "check": [
        AUTH,
        CHANNEL,
        BODY,
        FORM,
        IMAGE,
        TEXT,
        {422: ("empty_reply", "empty_question", "too_many_candidates"), 503: ("spool_unavailable",)},
    ],
    "register_image": [AUTH, BODY, FORM, IMAGE, TEXT],
    "get_decision": [AUTH, {404: ("not_found",), 503: ("database_unavailable",)}],
    "rerank": [
        AUTH,
        CHANNEL,
        BODY,
        FORM,
        IMAGE,
        TEXT,
        {422: ("too_many_documents",), 503: ("scorer_unavailable",)},
    ],
    "chat_completions": [
        AUTH,
        CHANNEL,
        BODY,
        TEXT,
        {
            413: ("image_too_large", "image_too_many_pixels", "image_decoded_too_large"),
            415: ("unsupported_image_format",),
            422: (
                "unsupported",
                "invalid_base64",
                "not_an_image",
                "truncated_image",
                "empty_image",
                "image_too_many_scans",
                "image_decode_timeout",
                "image_url_not_allowed",
                "image_fetch_failed",
            ),
            502: ("upstream_unavailable", "upstream_error", "upstream_malformed", "upstream_too_large"),
            503: ("upstream_not_configured", "spool_unavailable", "image_decoder_busy"),
            504: ("upstream_timeout",),
        },
    ],
}
"""Every error code each operation may answer with, by HTTP status."""

STATUS_TEXT = {
    400: "The body cannot be read.",
    401: "No valid API key.",
    403: "The API key is for another channel.",
    404: "Not found.",
    405: "The route does not take this method.",
    408: "The body did not arrive in time.",
    413: "The body or the photo is too large.",
    415: "The photo's format is not accepted.",
    422: "A field is missing, of the wrong type, too long or not storable; or the photo is unusable.",
    502: "The upstream model server failed.",
    503: "A service the request needs is unavailable; nothing was decided. Retry.",
    504: "The upstream model server did not answer in time.",
}


def error_codes(operation: str) -> dict[int, list[str]]:
    """The operation's error codes by status, each listed once, in order."""
    merged: dict[int, list[str]] = {}
    for table in [*ERRORS[operation], ROUTING]:
        for status, codes in table.items():
            merged.setdefault(status, [])
            merged[status] += [c for c in codes if c not in merged[status]]
    return dict(sorted(merged.items()))


PASSED_ON: Schema = {
    "description": "The upstream model server's own 4xx answer, passed on as it came (its JSON, any shape)."
}


def _error_response(status: int, codes: list[str], *, upstream: bool = False) -> Schema:
    """The documented error body with the codes of ``status``; with ``upstream``, a 4xx may also be
    the upstream's own answer, passed on (the proxy)."""
    schema: Schema = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"enum": codes}, "message": STRING},
            }
        },
    }
    description = f"{STATUS_TEXT[status]} `error.code`: {', '.join(f'`{c}`' for c in codes)}."
    if upstream and 400 <= status < 500:
        schema = {"anyOf": [schema, PASSED_ON]}
        description += " Or the upstream's own answer with this status, passed on."
    response: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": STRING}}
    elif status == 503:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait; sent when an API key could not be checked.",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return response


def _errors(operation: str) -> dict[str, Schema]:
    upstream = operation == "chat_completions"
    return {
        str(status): _error_response(status, codes, upstream=upstream)
        for status, codes in error_codes(operation).items()
    }


# -- bodies ------------------------------------------------------------------------------------

IMAGE_REF: Schema = {
    "description": 'A photo: `{"data": "<base64 JPEG/PNG/WebP/GIF>"}` (a `data:image/...;base64,` prefix is '
    'accepted; so is the bare base64 string) or `{"id": "<image_id>"}` from `POST /v1/images`.',
    "oneOf": [
        {"type": "string", "contentEncoding": "base64"},
        {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"type": "string", "contentEncoding": "base64", "examples": [EXAMPLE_PNG]}
            },
            "additionalProperties": False,
        },
        {
            "type": "object",
            "required": ["id"],
            "properties": {"id": STRING},
            "additionalProperties": False,
        },
    ],
}

CHECK_FIELDS: Schema = {
    "question": {"type": "string", "description": "The customer's message; may be empty with an image."},
    "reply": {"type": "string", "description": "The chatbot's draft (not blank)."},
    "candidates": {
        "type": "array",
        "items": STRING,
        "description": "Alternative drafts: ranked with `reply`, the best is decided on.",
    },
    "channel": {"type": "string", "maxLength": 100, "description": "The channel (a key's own by default)."},
    "conversation_id": {"type": "string", "maxLength": 200},
    "locale": {"type": "string", "maxLength": 16, "description": "`zh…` or `en…`; detected otherwise."},
}

POLICY_REF: Schema = {
    "type": "object",
    "required": ["channel", "version"],
    "properties": {"channel": STRING, "version": {"type": "integer"}},
}
SCORER_REF: Schema = {
    "type": "object",
    "required": ["name", "version"],
    "properties": {"name": STRING, "version": STRING},
}
SCORE: Schema = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
INPUTS_USED: Schema = {"type": "array", "items": {"enum": list(INPUTS)}}

CHECK_RESPONSE: Schema = {
    "type": "object",
    "required": [
        "decision_id",
        "action",
        "score",
        "band",
        "reply",
        "follow_up",
        "escalation_id",
        "holding_message",
        "policy",
        "scorer",
        "cached",
        "degraded",
        "reason",
        "inputs_used",
        "instruction_used",
        "locale",
        "issue_phrase",
        "issue_kind",
        "uncertain",
        "uncertain_reason",
        "timings_ms",
        "image_text_status",
    ],
    "properties": {
        "decision_id": STRING,
        "action": _ref("Action"),
        "score": SCORE,
        "band": {**NULLABLE_STRING, "description": "The policy band, e.g. `[0.5,0.6)`; null when degraded."},
        "reply": {**NULLABLE_STRING, "description": "What the customer sees; null for review/escalate."},
        "follow_up": NULLABLE_STRING,
        "escalation_id": {**NULLABLE_STRING, "description": "The queue item, for review/escalate."},
        "holding_message": NULLABLE_STRING,
        "policy": POLICY_REF,
        "scorer": SCORER_REF,
        "cached": {"type": "boolean"},
        "degraded": {"type": "boolean"},
        "reason": NULLABLE_STRING,
        "inputs_used": INPUTS_USED,
        "instruction_used": {"type": "boolean"},
        "locale": STRING,
        "issue_phrase": NULLABLE_STRING,
        "issue_kind": STRING,
        "uncertain": {"type": "boolean"},
        "uncertain_reason": NULLABLE_STRING,
        "timings_ms": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
        "image_text_status": _nullable({"enum": list(get_args(Status))}),
        "candidates": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["reply", "score"],
                "properties": {"reply": STRING, "score": SCORE},
            },
        },
    },
}

DECISION: Schema = {
    "type": "object",
    "required": [
        "decision_id",
        "created_at",
        "conversation_id",
        "channel",
        "action",
        "score",
        "band",
        "state",
        "reply",
        "draft",
        "follow_up",
        "holding_message",
        "issue_phrase",
        "issue_kind",
        "uncertain",
        "uncertain_reason",
        "escalation_id",
        "policy",
        "scorer",
        "inputs_used",
        "instruction_used",
        "cached",
        "degraded",
    ],
    "properties": {
        "decision_id": STRING,
        "created_at": {"type": "string", "format": "date-time"},
        "conversation_id": NULLABLE_STRING,
        "channel": STRING,
        "action": _ref("Action"),
        "score": SCORE,
        "band": NULLABLE_STRING,
        "state": {"enum": ["sent", *QUEUE_STATES]},
        "reply": {**NULLABLE_STRING, "description": "The final reply, once there is one."},
        "draft": STRING,
        "follow_up": NULLABLE_STRING,
        "holding_message": NULLABLE_STRING,
        "issue_phrase": NULLABLE_STRING,
        "issue_kind": {**NULLABLE_STRING, "description": "null for decisions recorded before it was."},
        "uncertain": {"type": ["boolean", "null"]},
        "uncertain_reason": NULLABLE_STRING,
        "escalation_id": NULLABLE_STRING,
        "policy": POLICY_REF,
        "scorer": SCORER_REF,
        "inputs_used": INPUTS_USED,
        "instruction_used": {"type": ["boolean", "null"]},
        "cached": {"type": "boolean"},
        "degraded": {"type": "boolean"},
    },
}

IMAGE_RESPONSE: Schema = {
    "type": "object",
    "required": ["image_id", "format", "width", "height"],
    "properties": {
        "image_id": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the bytes."},
        "format": {"enum": ["jpeg", "png", "webp", "gif"]},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
    },
}

RERANK_REQUEST: Schema = {
    "type": "object",
    "required": ["query", "documents"],
    "properties": {
        "query": STRING,
        "documents": {"type": "array", "items": STRING, "minItems": 1, "maxItems": 64},
        "image": IMAGE_REF,
        "instruction": {
            "type": "string",
            "maxLength": 2000,
            "description": "Scoring instruction; unset: the channel's policy's.",
        },
        "channel": {
            "type": "string",
            "maxLength": 100,
            "description": "The channel (a key's own by default): its policy's instruction and its score "
            "map in force apply, as in `POST /v1/guard`.",
        },
    },
    "examples": [
        {
            "query": "The zipper on my jacket broke",
            "documents": ["We will send a replacement zipper pull today.", "Our store opens at 9."],
        }
    ],
}

RERANK_RESPONSE: Schema = {
    "type": "object",
    "required": ["results", "scorer"],
    "properties": {
        "results": {
            "type": "array",
            "description": "Best first.",
            "items": {
                "type": "object",
                "required": ["index", "document", "relevance_score"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "document": STRING,
                    "relevance_score": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 1,
                        "description": "The score `POST /v1/guard` gives the document as a draft on the "
                        "channel (its score map applied), rounded to 4 places.",
                    },
                },
            },
        },
        "scorer": SCORER_REF,
    },
}

GUARD_SUMMARY: Schema = {
    "description": "The decision on a choice (never the draft); `action` null and `reason` "
    "`no_text_to_guard` for an answer with tool calls only.",
    "type": "object",
    "properties": {
        "decision_id": STRING,
        "action": _nullable(_ref("Action")),
        "score": SCORE,
        "band": NULLABLE_STRING,
        "escalation_id": NULLABLE_STRING,
        "follow_up": NULLABLE_STRING,
        "degraded": {"type": "boolean"},
        "uncertain": {"type": "boolean"},
        "uncertain_reason": NULLABLE_STRING,
        "reason": NULLABLE_STRING,
        "durable": {"type": "boolean"},
    },
}

CONTENT_PART: Schema = {
    "oneOf": [
        {
            "type": "object",
            "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": STRING},
        },
        {
            "type": "object",
            "required": ["type", "image_url"],
            "properties": {
                "type": {"const": "image_url"},
                "image_url": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {
                            "type": "string",
                            "description": "An http(s) URL (fetched within GUARD_IMAGE_FETCH_ALLOW_HOSTS) "
                            "or a `data:image/...;base64,` URL.",
                        }
                    },
                },
            },
        },
    ]
}

CHAT_REQUEST: Schema = {
    "description": "An OpenAI chat completion request, forwarded upstream without the guard's own fields "
    "(`channel`, `guard*`). The last user message (its text parts and first image) is what the reply is "
    "guarded against: there must be one.",
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": STRING,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {
                        "anyOf": [STRING, {"type": "null"}, {"type": "array", "items": CONTENT_PART}]
                    },
                },
            },
            "contains": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"const": "user"},
                    "content": {"anyOf": [STRING, {"type": "array", "items": CONTENT_PART}]},
                },
            },
        },
        "stream": {"type": "boolean"},
        "n": {"const": 1},
        "channel": {"type": "string", "minLength": 1, "maxLength": 100},
    },
    "examples": [
        {
            "model": "chatbot",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "The pocket seam came open, what do I do?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{EXAMPLE_PNG}"}},
                    ],
                }
            ],
        }
    ],
}

CHAT_RESPONSE: Schema = {
    "description": "The upstream's chat completion, each choice's visible text replaced by what the customer "
    "should see, with the decision in `guard` (and in `choices[i].guard` when several choices were guarded).",
    "type": "object",
    "required": ["guard"],
    "properties": {"choices": {"type": "array", "items": {"type": "object"}}, "guard": GUARD_SUMMARY},
}

SSE_EVENT: Schema = {
    "description": "Server-sent events in the upstream's chunk format: each `data:` a "
    "`chat.completion.chunk` (the decision as `guard` on the last, the one with the finish reason), "
    "then `data: [DONE]`. "
    "Described per event (as OpenAPI 3.2's `itemSchema` does), and as the text it is.",
    "type": ["object", "string"],
    "properties": {"data": STRING, "event": STRING, "id": STRING},
}

HEALTH: Schema = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}

READY: Schema = {
    "type": "object",
    "required": ["ready", "checks", "spool"],
    "properties": {
        "ready": {"type": "boolean"},
        "checks": {
            "type": "object",
            "required": ["scorer", "sql", "cache", "spool"],
            "additionalProperties": {"type": "boolean"},
        },
        "spool": {
            "type": "object",
            "required": ["state", "error"],
            "properties": {"state": {"enum": ["ok", "failing", "off"]}, "error": NULLABLE_STRING},
        },
    },
}

# -- operations --------------------------------------------------------------------------------

SECURITY: list[dict[str, list[str]]] = [{"bearerKey": []}, {"guardKey": []}]
"""Every ``/v1/`` route takes either scheme; an open loopback guard (no key created yet) needs none."""

GUARD_HEADERS = {
    "X-Guard-Action": {
        "description": "The decision's action, or `unguarded` (with `X-Guard-Reason`).",
        "schema": {"enum": [*ACTIONS, "unguarded"]},
    },
    "X-Guard-Decision": {"description": "The decision's id.", "schema": STRING},
    "X-Guard-Reason": {
        "description": "Why the answer is unguarded: `no_text_to_guard` (tool calls only).",
        "schema": {"enum": ["no_text_to_guard"]},
    },
    "X-Guard-Uncertain": {
        "description": "Why the guard could not judge the case (e.g. `issue_not_stated`).",
        "schema": STRING,
    },
}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _multipart(properties: Schema, required: list[str]) -> Schema:
    fields = {
        **properties,
        "image": {"type": "string", "format": "binary", "description": "The photo's bytes."},
    }
    return {"multipart/form-data": {"schema": {"type": "object", "properties": fields, "required": required}}}


def _plain(operation: str, summary: str, responses: dict[str, Schema]) -> Schema:
    """An operation outside ``/v1/``: no key, and only Starlette's own refusal of another method."""
    return {
        "operationId": operation,
        "summary": summary,
        "security": [],
        "responses": {**responses, "405": _error_response(405, ["method_not_allowed"])},
    }


def _operation(operation: str, summary: str, ok: dict[str, Schema], **more: Any) -> Schema:
    return {
        "operationId": operation,
        "summary": summary,
        "security": SECURITY,
        "responses": {**ok, **_errors(operation)},
        **more,
    }


def _check_request() -> Schema:
    json_fields = {**CHECK_FIELDS, "image": IMAGE_REF}
    form_fields = {k: v for k, v in CHECK_FIELDS.items() if k != "candidates"}
    form_fields["candidates"] = {"type": "array", "items": STRING, "description": "One form field per draft."}
    return {
        "required": True,
        "content": {
            **_json(
                {
                    "type": "object",
                    "required": ["question", "reply"],
                    "properties": json_fields,
                    "examples": [
                        {
                            "conversation_id": "c-1029",
                            "question": "口袋开线怎么办？",
                            "image": {"data": EXAMPLE_PNG},
                            "reply": "感谢您的反馈，本品支持7天无理由退换",
                            "locale": "zh",
                        }
                    ],
                }
            ),
            **_multipart(form_fields, ["question", "reply"]),
        },
    }


def _image_request() -> Schema:
    return {
        "required": True,
        "content": {
            **_json({"type": "object", "required": ["image"], "properties": {"image": IMAGE_REF}}),
            **_multipart({}, ["image"]),
        },
    }


def document() -> Schema:
    """The OpenAPI 3.1 document (a fresh dict each call)."""
    paths: Schema = {
        "/v1/guard": {
            "post": _operation(
                "check",
                "Guard a draft reply: score it against the question and photo, apply the channel's policy.",
                {"200": {"description": "The decision.", "content": _json(CHECK_RESPONSE)}},
                requestBody=_check_request(),
            )
        },
        "/v1/images": {
            "post": _operation(
                "register_image",
                "Register a photo as soon as the customer sends it; its text is read meanwhile.",
                {"201": {"description": "The photo is stored.", "content": _json(IMAGE_RESPONSE)}},
                requestBody=_image_request(),
            )
        },
        "/v1/decisions/{decision_id}": {
            "get": _operation(
                "get_decision",
                "A decision with its current state (a key sees only its own channel's).",
                {"200": {"description": "The decision.", "content": _json(DECISION)}},
                parameters=[{"name": "decision_id", "in": "path", "required": True, "schema": STRING}],
            )
        },
        "/v1/rerank": {
            "post": _operation(
                "rerank",
                "Order documents by how well they answer a query (and an optional photo), scored as on "
                "the channel's checks.",
                {"200": {"description": "The documents, best first.", "content": _json(RERANK_RESPONSE)}},
                requestBody={"required": True, "content": _json(RERANK_REQUEST)},
            )
        },
        "/v1/chat/completions": {
            "post": _operation(
                "chat_completions",
                "The OpenAI-compatible proxy: the upstream's answer, guarded.",
                {
                    "200": {
                        "description": "The guarded completion (a stream with `stream: true`).",
                        "headers": GUARD_HEADERS,
                        "content": {
                            **_json(CHAT_RESPONSE),
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    "4XX": {
                        "description": "An upstream 4xx answer, passed on as it came (its own JSON).",
                        "content": _json({}),
                    },
                },
                requestBody={"required": True, "content": _json(CHAT_REQUEST)},
            )
        },
        "/healthz": {
            "get": _plain(
                "healthz", "The process is up.", {"200": {"description": "Up.", "content": _json(HEALTH)}}
            )
        },
        "/readyz": {
            "get": _plain(
                "readyz",
                "Ready: the scorer is loaded, SQL answers and the spool writes.",
                {
                    "200": {"description": "Ready.", "content": _json(READY)},
                    "503": {"description": "Not ready; `checks` says what is not.", "content": _json(READY)},
                },
            )
        },
        "/metrics": {
            "get": _plain(
                "metrics",
                "Prometheus metrics (text format 0.0.4); see docs/api.md#metrics.",
                {"200": {"description": "The metrics.", "content": {"text/plain": {"schema": STRING}}}},
            )
        },
        "/openapi.json": {
            "get": _plain(
                "openapi",
                "This document.",
                {"200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}},
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Reply Guard",
            "version": "1",
            "description": "Scores whether a chatbot's draft reply addresses the customer's issue "
            "(question and photo) and applies the channel's policy. Every error is "
            '`{"error": {"code": ..., "message": ...}}`; the codes are listed per response. See docs/api.md.',
        },
        "paths": paths,
        "components": {
            "schemas": {"Action": {"enum": list(ACTIONS)}},
            "securitySchemes": {
                "bearerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`guard keys create --channel NAME`) as "
                    "`Authorization: Bearer <key>`.",
                },
                "guardKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Guard-Key",
                    "description": "The same API key as `X-Guard-Key: <key>`.",
                },
            },
        },
    }
