"""The key that signs a user's webhooks (Replicate: GET /v1/webhooks/default/secret)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from goshen.accounts import Principal
from serving.http.dependencies import SessionDep, require_scope
from serving.webhooks.signing import webhook_secret_for

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
GeneratePrincipal = Annotated[Principal, Depends(require_scope("generate"))]


class WebhookSecret(BaseModel):
    key: str = Field(description="`whsec_...`: verify `webhook-signature` headers with it")


@router.get("/default/secret")
def get_webhook_secret(principal: GeneratePrincipal, session: SessionDep) -> WebhookSecret:
    """The secret that signs every webhook of your jobs; made on first request, then stable."""
    secret = webhook_secret_for(session, principal.user)
    session.commit()
    return WebhookSecret(key=secret)
