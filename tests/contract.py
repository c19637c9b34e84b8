"""The official SDK's models as the oracle for every answer the fake Xquik server makes.

``x-twitter-scraper`` (a test dependency only) is Xquik's own Python SDK, generated from
its OpenAPI spec. ``contract_problems`` checks an answer body against the model the SDK
would parse it with; an answer the SDK could not parse is a fake that drifted.
"""

from __future__ import annotations

from typing import Any

import pydantic
from x_twitter_scraper.types.account_retrieve_response import AccountRetrieveResponse
from x_twitter_scraper.types.credit_retrieve_balance_response import (
    CreditRetrieveBalanceResponse,
)
from x_twitter_scraper.types.shared.error import Error
from x_twitter_scraper.types.x.account_list_response import AccountListResponse
from x_twitter_scraper.types.x.profile_update_avatar_response import ProfileUpdateAvatarResponse
from x_twitter_scraper.types.x.write_action_retrieve_response import (
    WriteActionRetrieveResponse,
)

API = "/api/v1"
_SUCCESS_MODELS: dict[tuple[str, str], type[pydantic.BaseModel]] = {
    ("PATCH", f"{API}/x/profile/avatar"): ProfileUpdateAvatarResponse,
    ("GET", f"{API}/credits"): CreditRetrieveBalanceResponse,
    ("GET", f"{API}/account"): AccountRetrieveResponse,
    ("GET", f"{API}/x/accounts"): AccountListResponse,
}


def model_for(method: str, path: str, status: int) -> type[pydantic.BaseModel]:
    """Return the SDK model an answer to ``method path`` with ``status`` must fit."""
    if status >= 400:
        return Error
    if method == "GET" and path.startswith(f"{API}/x/write-actions/"):
        return WriteActionRetrieveResponse
    return _SUCCESS_MODELS[(method, path)]


def contract_problems(answers: list[tuple[str, str, int, Any]]) -> list[str]:
    """Return one line per answer the SDK's models refuse (empty: all fit)."""
    problems = []
    for method, path, status, body in answers:
        model = model_for(method, path, status)
        try:
            model.model_validate(body, strict=False)
        except pydantic.ValidationError as exc:
            problems.append(f"{method} {path} -> {status}: not a {model.__name__}: {exc}")
    return problems
