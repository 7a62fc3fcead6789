"""A short session through a Python client generated from the running server's
/openapi.json by openapi-python-client: every answer must parse into the
generated types. Usage: python scenario.py BASE_URL (the client importable)."""

import sys
import uuid
from http import HTTPStatus

from chatbot_api_client import Client
from chatbot_api_client.api.chat import (
    delete_conversation,
    export_conversation,
    get_conversation_stats,
    get_history,
    send_message,
)
from chatbot_api_client.api.service import health
from chatbot_api_client.api.sessions import list_sessions, search_messages
from chatbot_api_client.models import (
    ChatRequestBody,
    ChatResponseBody,
    DetailBody,
    ExportFormat,
    HistoryEntry,
    SearchHit,
    SessionItem,
    StatsBody,
    StatusBody,
    ValidationBody,
)


def check(condition, what):
    if not condition:
        raise SystemExit(f"scenario failed: {what}")
    print(f"ok - {what}")


def main(base_url):
    client = Client(base_url=base_url, raise_on_unexpected_status=True)
    session = f"client-{uuid.uuid4().hex[:8]}"

    check(isinstance(health.sync(client=client), StatusBody), "health parses as StatusBody")

    for text in ["Hello!", "What's your name?", "Tell me about FastAPI"]:
        reply = send_message.sync(
            client=client,
            body=ChatRequestBody(user_message=text, user_name="Py", session_id=session),
        )
        check(isinstance(reply, ChatResponseBody), f"send_message({text!r}) parses")
    check(reply.bot_reply.startswith("FastAPI is a modern"), "the seed's reply comes back")

    page = get_history.sync_detailed(session, client=client, offset=1, limit=1)
    check(page.status_code == HTTPStatus.OK, "a history page is 200")
    check(
        isinstance(page.parsed, list) and all(isinstance(e, HistoryEntry) for e in page.parsed),
        "the page parses as list[HistoryEntry]",
    )
    check([e.user_message for e in page.parsed] == ["What's your name?"], "the page is the second exchange")
    check(page.headers.get("x-total-count") == "3", "X-Total-Count says 3")
    check('rel="next"' in page.headers.get("link", ""), "a Link to the next page")

    missing = get_history.sync_detailed("nobody-" + session, client=client)
    check(missing.status_code == HTTPStatus.NOT_FOUND, "an unknown session is 404")
    check(isinstance(missing.parsed, DetailBody), "the 404 parses as DetailBody")
    check("No conversation history found" in missing.parsed.detail, "the 404 says why")

    bad = get_history.sync_detailed(session, client=client, limit=0)
    check(bad.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, "limit=0 is 422")
    check(isinstance(bad.parsed, ValidationBody), "the 422 parses as ValidationBody")
    check(bad.parsed.detail[0].type_ == "greater_than_equal", "the 422 names the rule")

    empty = send_message.sync_detailed(
        client=client, body=ChatRequestBody(user_message="", session_id=session)
    )
    check(empty.status_code == HTTPStatus.UNPROCESSABLE_ENTITY, "an empty message is 422")
    check(isinstance(empty.parsed, ValidationBody), "that 422 parses as ValidationBody")

    stats = get_conversation_stats.sync(session, client=client)
    check(isinstance(stats, StatsBody) and stats.total_messages == 3, "stats parse, 3 messages")

    sessions = list_sessions.sync(client=client, limit=1000)
    check(all(isinstance(s, SessionItem) for s in sessions), "sessions parse as list[SessionItem]")
    check(session in [s.session_id for s in sessions], "the session is listed")

    hits = search_messages.sync(client=client, q="fastapi", session_id=session)
    check(all(isinstance(h, SearchHit) for h in hits) and len(hits) == 2, "search finds 2 SearchHits")

    for fmt in ExportFormat:
        body = export_conversation.sync(session, client=client, format_=fmt)
        check(isinstance(body, str) and "Tell me about FastAPI" in body, f"export as {fmt.value}")

    gone = delete_conversation.sync_detailed(session, client=client)
    check(gone.status_code == HTTPStatus.NO_CONTENT, "delete is 204")
    again = delete_conversation.sync_detailed(session, client=client)
    check(isinstance(again.parsed, DetailBody), "deleting again is a typed 404")
    print("scenario passed")


if __name__ == "__main__":
    main(sys.argv[1])
