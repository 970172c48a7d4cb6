"""A small FastAPI customer-service chatbot with Reply Guard in its reply path.

Run it (from the repository root, after ``make install`` and ``.venv/bin/guard migrate``)::

    .venv/bin/uvicorn examples.fastapi_chatbot.app:app --port 8080

and ask it something::

    curl -s localhost:8080/chat -H 'content-type: application/json' \\
         -d '{"conversation_id": "c-1", "question": "The pocket seam came open, what do I do?"}'

Every reply from ``/chat``, ``/chat/upload`` and ``/chat/stream`` goes through the guard first:
the customer sees the draft, the draft plus a specific follow-up, or a holding message while a
human takes over. The decision is in the ``X-Guard-Action`` / ``X-Guard-Decision`` headers and
in the ``guard`` field of the JSON. The guard runs in-process (``LocalGuard``, configured by the
same ``GUARD_*`` variables as ``guard serve``); set ``GUARD_SERVER_URL`` (and
``GUARD_SERVER_KEY``) to call a guard server instead.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Form, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from guard.middleware import Checker, GuardMiddleware, HttpChecker, LocalGuard

Generate = Callable[[str], Awaitable[str]]

CANNED = {
    "seam": "Sorry about the seam! Our jeans are covered for 90 days: we can send a replacement pair.",
    "开线": "很抱歉给您带来不便，牛仔裤90天内开线可免费更换，我们为您补寄一条新的。",
    "refund": "Refunds reach your card within 3-5 working days after we receive the item.",
}


async def canned_reply(question: str) -> str:
    """Stands in for the chatbot's model: a keyword lookup, after a pause like generation takes."""
    await asyncio.sleep(0.05)
    for word, answer in CANNED.items():
        if word in question.lower():
            return answer
    return "Thanks for reaching out! We support returns within 7 days of delivery."


class ChatIn(BaseModel):
    question: str
    conversation_id: str | None = None
    image: str | None = None
    """The customer's photo, base64 (or a data: URL)."""


def create_chatbot(checker: Checker | None = None, generate: Generate = canned_reply) -> FastAPI:
    """The chatbot app. ``checker`` defaults to a guard server (GUARD_SERVER_URL) or an in-process guard."""
    own: LocalGuard | HttpChecker | None = None
    if checker is None:
        server = os.environ.get("GUARD_SERVER_URL")
        own = HttpChecker(server, api_key=os.environ.get("GUARD_SERVER_KEY")) if server else LocalGuard()
        checker = own

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if own is None:
            yield
            return
        async with own:  # opens the in-process guard (SQL, cache, scorer) or the HTTP client
            yield

    app = FastAPI(title="Example chatbot", lifespan=lifespan)
    app.add_middleware(
        GuardMiddleware,
        checker=checker,
        routes=["/chat", "/chat/upload", "/chat/stream"],
        question="question",  # JSON path of the customer's question in the request
        photo="image",  # JSON path of the base64 photo (for multipart: the file field's name)
        reply="reply",  # JSON path of the draft in the response
        conversation="conversation_id",
        decision_field="guard",  # the decision is added to the response JSON under this name
        streaming="guard",  # text/event-stream replies are buffered and guarded too
        stream_reply="text",  # JSON path of the text inside each data: event
    )

    @app.post("/chat")
    async def chat(body: ChatIn) -> dict[str, str | None]:
        return {"conversation_id": body.conversation_id, "reply": await generate(body.question)}

    @app.post("/chat/upload")
    async def chat_upload(question: str = Form(), image: UploadFile | None = None) -> dict[str, str]:
        if image is not None:
            await image.read()  # the chatbot's own use of the photo
        return {"reply": await generate(question)}

    @app.post("/chat/stream")
    async def chat_stream(body: ChatIn) -> StreamingResponse:
        text = await generate(body.question)

        async def events() -> AsyncIterator[str]:
            for word in text.split(" "):
                yield "data: " + json.dumps({"text": word + " "}, ensure_ascii=False) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_chatbot()
