"""Accounts through a Python client generated from a server with --accounts
(openapi-python-client): sign up, sign in with the OAuth2 form, act with the
access token, make a personal key and act with it, refresh, and a refused
sign-in; every answer must parse into the generated types.
Usage: python accounts.py BASE_URL (the chatbot_accounts_client package importable)."""

import sys
import uuid
from http import HTTPStatus

from chatbot_accounts_client import AuthenticatedClient, Client
from chatbot_accounts_client.api.accounts import create_key, me, refresh, register, sign_in
from chatbot_accounts_client.api.chat import get_history, send_message
from chatbot_accounts_client.models import (
    AccountBody,
    ChatRequestBody,
    DetailBody,
    KeyBody,
    NewKeyBody,
    RefreshBody,
    RegisterBody,
    TokenBody,
    TokenForm,
)

base = sys.argv[1]
client = Client(base_url=base, raise_on_unexpected_status=True)
name = "py" + uuid.uuid4().hex[:12]
password = "generated client password"

made = register.sync_detailed(client=client, body=RegisterBody(username=name, password=password))
assert made.status_code == HTTPStatus.CREATED, made
assert isinstance(made.parsed, AccountBody) and made.parsed.username == name, made.parsed

signed = sign_in.sync_detailed(client=client, body=TokenForm(username=name, password=password))
assert signed.status_code == HTTPStatus.OK, signed
tokens = signed.parsed
assert isinstance(tokens, TokenBody) and tokens.token_type == "bearer", tokens

user = AuthenticatedClient(base_url=base, token=tokens.access_token, raise_on_unexpected_status=True)
who = me.sync(client=user)
assert isinstance(who, AccountBody) and who.owner == f"account:{name}", who
sent = send_message.sync_detailed(client=user, body=ChatRequestBody(user_message="Hello!", session_id="py"))
assert sent.status_code == HTTPStatus.OK, sent

key = create_key.sync(client=user, body=NewKeyBody(name="generated client"))
assert isinstance(key, KeyBody) and key.key.startswith("cbk_"), key
by_key = AuthenticatedClient(base_url=base, token=key.key, raise_on_unexpected_status=True)
history = get_history.sync(client=by_key, session_id="py")
assert isinstance(history, list) and history[0].user_message == "Hello!", history

renewed = refresh.sync(client=client, body=RefreshBody(refresh_token=tokens.refresh_token))
assert isinstance(renewed, TokenBody) and renewed.refresh_token != tokens.refresh_token, renewed

wrong = sign_in.sync_detailed(client=client, body=TokenForm(username=name, password="not the password"))
assert wrong.status_code == HTTPStatus.UNAUTHORIZED, wrong
assert isinstance(wrong.parsed, DetailBody), wrong.parsed
print(f"accounts scenario ok: {name} signed up, in, acted by token and key, refreshed")
