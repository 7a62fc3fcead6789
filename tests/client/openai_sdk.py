"""The official `openai` Python package against the running server's /v1, then
the same conversation through the seed API. Usage: python openai_sdk.py BASE_URL"""

import json
import sys
import urllib.request

import openai
from openai import OpenAI

MODEL = "chatbot-rules"


def seed_history(base: str, conversation_id: str) -> list:
    with urllib.request.urlopen(f"{base}/chat/history/{conversation_id}") as answer:
        return json.load(answer)


def main(base: str) -> None:
    client = OpenAI(base_url=f"{base}/v1", api_key="not-needed-on-an-open-server")

    # A conversation with metadata and its first items, stored as given.
    conversation = client.conversations.create(
        metadata={"topic": "sdk", "lang": "en"},
        items=[
            {"type": "message", "role": "user", "content": "Hello!"},
            {"type": "message", "role": "assistant", "content": "Hi! Ask me anything."},
        ],
    )
    assert conversation.id.startswith("conv_"), conversation
    assert conversation.object == "conversation"
    assert conversation.metadata == {"topic": "sdk", "lang": "en"}, conversation.metadata

    added = client.conversations.items.create(
        conversation.id,
        items=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me about FastAPI"}]},
            {"type": "message", "role": "assistant", "content": "It is a Python web framework."},
        ],
    )
    assert [item.id for item in added.data] == ["msg_2u", "msg_2a"], added

    # Pages in both orders, by hand and through the SDK's auto-pagination.
    first = client.conversations.items.list(conversation.id, limit=3, order="asc")
    assert [item.id for item in first.data] == ["msg_1u", "msg_1a", "msg_2u"], first
    assert first.has_more
    second = client.conversations.items.list(conversation.id, limit=3, order="asc", after=first.last_id)
    assert [item.id for item in second.data] == ["msg_2a"], second
    assert not second.has_more
    newest_first = [item.id for item in client.conversations.items.list(conversation.id, limit=1)]
    assert newest_first == ["msg_2a", "msg_2u", "msg_1a", "msg_1u"], newest_first
    texts = [item.content[0].text for item in client.conversations.items.list(conversation.id, order="asc")]
    assert texts == ["Hello!", "Hi! Ask me anything.", "Tell me about FastAPI", "It is a Python web framework."], texts

    # Retrieve one item, delete another.
    item = client.conversations.items.retrieve("msg_1u", conversation_id=conversation.id)
    assert item.role == "user" and item.content[0].type == "input_text", item
    after_delete = client.conversations.items.delete("msg_2a", conversation_id=conversation.id)
    assert after_delete.id == conversation.id, after_delete
    try:
        client.conversations.items.retrieve("msg_2a", conversation_id=conversation.id)
        raise AssertionError("a deleted item was found")
    except openai.NotFoundError:
        pass

    # A reply through the Responses API, from the conversation's history.
    response = client.responses.create(model=MODEL, input="what did I just say?", conversation=conversation.id)
    assert response.output_text == 'You said: "Tell me about FastAPI"', response.output_text
    assert response.output[0].id == "msg_3a", response.output

    # The same, streamed: OpenAI's response events, the answer stored once complete.
    events = list(
        client.responses.create(model=MODEL, input="who are you?", conversation=conversation.id, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    streamed = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert streamed == "I'm FastAPI Bot, your friendly assistant built with FastAPI!", streamed
    assert events[-1].response.output_text == streamed

    # Chat Completions, streamed in chunks.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == "Hi there! How can I help you today?", pieces
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fastapi?"}])
    assert completion.choices[0].message.content.startswith("FastAPI is"), completion
    assert [model.id for model in client.models.list()] == [MODEL]

    # Errors parse as the SDK's typed exceptions.
    try:
        client.conversations.retrieve("conv_does_not_exist")
        raise AssertionError("an unknown conversation was found")
    except openai.NotFoundError as err:
        assert err.status_code == 404
    try:
        client.conversations.update(conversation.id, metadata={f"k{i}": "v" for i in range(17)})
        raise AssertionError("17 metadata pairs were accepted")
    except openai.BadRequestError as err:
        assert err.param == "metadata" and err.code == "object_above_max_properties", err.body
    try:
        client.conversations.items.list(conversation.id, after="not-an-item")
        raise AssertionError("a bad cursor was accepted")
    except openai.BadRequestError as err:
        assert err.param == "after", err.body

    updated = client.conversations.update(conversation.id, metadata={"topic": "sdk", "status": "done"})
    assert updated.metadata == {"topic": "sdk", "status": "done"}, updated

    # The same conversation through the seed API: the deleted reply is an
    # empty string, the rest as stored.
    history = seed_history(base, conversation.id)
    pairs = [(e["user_message"], e["bot_reply"]) for e in history]
    assert pairs == [
        ("Hello!", "Hi! Ask me anything."),
        ("Tell me about FastAPI", ""),
        ("what did I just say?", 'You said: "Tell me about FastAPI"'),
        ("who are you?", "I'm FastAPI Bot, your friendly assistant built with FastAPI!"),
    ], pairs

    deleted = client.conversations.delete(conversation.id)
    assert deleted.deleted, deleted
    try:
        seed_history(base, conversation.id)
        raise AssertionError("a deleted conversation still has a history")
    except urllib.error.HTTPError as err:
        assert err.code == 404
    print("openai SDK scenario: ok")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
