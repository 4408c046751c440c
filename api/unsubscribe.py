"""Public unsubscribe: RFC 8058 one-click POST, and a confirmation page for people who click the link.

The signed token is the only credential (api/auth.py leaves /u/ public). A GET never unsubscribes: link
scanners and mail-security proxies follow every link in a message, so only a POST acts.
"""

from __future__ import annotations

import html
from typing import Annotated

from litestar import MediaType, Request, Response, get, head, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from api import audit
from api.deps import Config, RedisClient
from api.suppressions import enqueue_propagation
from engine import events, suppression
from engine.errors import NotFound
from engine.languages import direction
from engine.unsubscribe import ONE_CLICK, UnsubscribeToken, read_token

# The page in the nine languages, written for the person who clicked, not for us. The titles match the
# footer link's wording in engine/layout.py, so the page answers the word they clicked.
PAGE_TEXT: dict[str, dict[str, str]] = {
    "fr": {"title": "Se désinscrire", "ask": "Ne plus recevoir nos e-mails à l'adresse {email} ?",
           "button": "Me désinscrire", "done_title": "Désinscription confirmée",
           "done": "L'adresse {email} ne recevra plus nos e-mails."},
    "en": {"title": "Unsubscribe", "ask": "Stop receiving our emails at {email}?",
           "button": "Unsubscribe me", "done_title": "You are unsubscribed",
           "done": "{email} will not receive our emails any more."},
    "es": {"title": "Darse de baja", "ask": "¿Dejar de recibir nuestros correos en {email}?",
           "button": "Darme de baja", "done_title": "Baja confirmada",
           "done": "{email} ya no recibirá nuestros correos."},
    "de": {"title": "Abmelden", "ask": "Keine E-Mails mehr von uns an {email} erhalten?",
           "button": "Jetzt abmelden", "done_title": "Abmeldung bestätigt",
           "done": "{email} erhält keine E-Mails mehr von uns."},
    "pt": {"title": "Cancelar inscrição", "ask": "Deixar de receber os nossos e-mails em {email}?",
           "button": "Cancelar a minha inscrição", "done_title": "Inscrição cancelada",
           "done": "{email} não receberá mais os nossos e-mails."},
    "ru": {"title": "Отписаться", "ask": "Больше не получать наши письма на адрес {email}?",
           "button": "Отписаться", "done_title": "Вы отписались",
           "done": "Адрес {email} больше не будет получать наши письма."},
    "zh": {"title": "退订", "ask": "不再向 {email} 发送我们的邮件？",
           "button": "确认退订", "done_title": "您已退订",
           "done": "{email} 将不再收到我们的邮件。"},
    "hi": {"title": "सदस्यता छोड़ें", "ask": "क्या {email} पर हमारे ईमेल प्राप्त करना बंद करना है?",
           "button": "सदस्यता छोड़ें", "done_title": "आपकी सदस्यता समाप्त हो गई है",
           "done": "{email} पर अब हमारे ईमेल नहीं आएँगे।"},
    "ar": {"title": "إلغاء الاشتراك", "ask": "هل تريد التوقف عن تلقي رسائلنا على {email}؟",
           "button": "إلغاء اشتراكي", "done_title": "تم إلغاء اشتراكك",
           "done": "لن يتلقى العنوان {email} رسائلنا بعد الآن."},
}
Token = Annotated[str, PathParameter(description="the signed token from the message's unsubscribe link")]
# The page a token that is not ours gets (for people, not JSON).
INVALID_PAGE = {404: ResponseSpec(str, media_type=MediaType.HTML, description="a token that is not ours",
                                  generate_examples=False)}
INVALID_TEXT = "This unsubscribe link is not valid. / Ce lien de désinscription n'est pas valide."

# The token sits in the URL: keep it out of caches, referrers and search indexes; the page runs no script.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}
STYLE = ("body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans','Noto Sans Arabic',"
         "'Noto Sans Devanagari','Noto Sans SC',sans-serif;background:#f4f4f5;color:#18181b;margin:0;padding:48px 16px}"
         "main{max-width:480px;margin:0 auto;background:#fff;border-radius:8px;padding:32px}"
         "h1{font-size:22px;margin:0 0 16px}p{font-size:16px;line-height:1.5}"
         "button{font-size:16px;padding:10px 20px;border:0;border-radius:6px;background:#18181b;color:#fff;cursor:pointer}")


def page(language: str, title: str, body: str) -> str:
    """A whole HTML page in one language, right to left where the script is."""
    return (f'<!doctype html><html lang="{language}" dir="{direction(language)}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>")


def _address(email: str) -> str:
    # <bdi> keeps a left-to-right address whole inside right-to-left Arabic text.
    return f"<bdi>{html.escape(email)}</bdi>"


def confirmation_page(token: str, read: UnsubscribeToken) -> str:
    text = PAGE_TEXT[read.language]
    # action is relative to /u/, so the form posts back to this URL even behind a proxy's path prefix
    body = (f"<p>{html.escape(text['ask']).replace('{email}', _address(read.email))}</p>"
            f'<form method="post" action="{html.escape(token)}"><button type="submit">'
            f"{html.escape(text['button'])}</button></form>")
    return page(read.language, text["title"], body)


def done_page(read: UnsubscribeToken) -> str:
    text = PAGE_TEXT[read.language]
    return page(read.language, text["done_title"],
                f"<p>{html.escape(text['done']).replace('{email}', _address(read.email))}</p>")


def _html(content: str, status: int = 200) -> Response:
    return Response(content, status_code=status, media_type=MediaType.HTML, headers=PAGE_HEADERS)


def _invalid() -> Response:
    return _html(page("en", "Unsubscribe", f"<p>{html.escape(INVALID_TEXT)}</p>"), 404)


@get("/u/{token:str}", operation_id="unsubscribePage", summary="Unsubscribe confirmation page",
     tags=["unsubscribe"],
     description="Public; the signed token is the credential. Shows a page in the contact's language with a "
                 "button that POSTs back here. Never unsubscribes by itself (link scanners follow GETs). "
                 "404 for a token that is not ours.",
     responses=INVALID_PAGE)
async def unsubscribe_page(token: Token, state: State) -> Response:
    read = read_token(state.secret_key, token)
    return _invalid() if read is None else _html(confirmation_page(token, read))


@head("/u/{token:str}", operation_id="unsubscribePageHead", summary="Check an unsubscribe link",
      tags=["unsubscribe"],
      description="Public. What GET answers, without the page: 200 for a token of ours, 404 otherwise. Link "
                  "checkers and mail-security proxies probe links this way; it never unsubscribes.",
      responses={404: ResponseSpec(None, description="a token that is not ours")})
async def unsubscribe_page_head(token: Token, state: State) -> Response[None]:
    status = 404 if read_token(state.secret_key, token) is None else 200
    return Response(None, status_code=status, media_type=MediaType.HTML, headers=PAGE_HEADERS)


@post("/u/{token:str}", operation_id="unsubscribe", summary="Unsubscribe (RFC 8058 one-click)",
      tags=["unsubscribe"], status_code=200,
      description="Public; the signed token is the credential. Suppresses the token's address at once with "
                  "reason `unsubscribe` (idempotent). Mailbox providers POST `List-Unsubscribe=One-Click` "
                  "(application/x-www-form-urlencoded) and get a plain 200; the confirmation page's button "
                  "posts an empty form and gets a page saying it is done. 404 for a token that is not ours, "
                  "with nothing written.",
      responses=INVALID_PAGE)
async def unsubscribe(token: Token, request: Request, state: State, redis: RedisClient, settings: Config) -> Response:
    read = read_token(state.secret_key, token)
    if read is None:
        return _invalid()
    one_click = ONE_CLICK.encode() in await request.body()
    try:
        audit.set_tenant(request, read.tenant_id)
        async with audit.transaction(request) as db:
            report = await suppression.add_suppressions(
                db, read.tenant_id, [read.email], reason="unsubscribe",
                source="one-click" if one_click else "unsubscribe-page")
            if report.changed_addresses:
                await events.emit(db, read.tenant_id, "unsubscribed",
                                  {"email": read.email, "campaign_id": read.campaign_id or None,
                                   "source": "one-click" if one_click else "unsubscribe-page"},
                                  contact_id=read.contact_id or None)
    except NotFound:    # a token of a tenant since deleted
        return _invalid()
    await enqueue_propagation(state.pool, redis, settings, read.tenant_id, report.changed_addresses)
    if one_click:
        return Response("unsubscribed\n", status_code=200, media_type=MediaType.TEXT, headers=PAGE_HEADERS)
    return _html(done_page(read))


ROUTES = [unsubscribe_page, unsubscribe_page_head, unsubscribe]
