"""Composition root of the console: builds the Flask app from its configuration."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Flask, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from servicekit import logs
from servicekit.auth import TokenVerifier

from . import forms
from .client import ApiError, SessionExpired, Unavailable, http_session
from .config import SERVICE, ConsoleConfig, load_config
from .security import init_security, to_sign_in
from .views import admin, auth, live, officer, provider, supervisor


def _when(value: str | None) -> str:
    """ISO time -> 'Thu 26 Nov, 14:30 UTC' (the browser's countdown shows local time too)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return value
    return moment.strftime("%a %d %b, %H:%M UTC")


def _errors(app: Flask) -> None:
    @app.errorhandler(SessionExpired)
    def _expired(_exc: SessionExpired) -> Response:
        return to_sign_in()

    @app.errorhandler(Unavailable)
    def _unavailable(exc: Unavailable) -> tuple[str, int]:
        template = "partials/unavailable.html" if request.headers.get("HX-Request") \
            else "unavailable.html"
        return render_template(template, message=str(exc)), 200

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[str, int]:
        template = "partials/error.html" if request.headers.get("HX-Request") else "error.html"
        return render_template(template, message=str(exc), errors=forms.field_errors(
            exc.errors)), exc.status if 400 <= exc.status < 600 else 502

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[str, int]:
        messages = {400: "That request could not be used. If you were filling in a form, "
                         "reload the page and try again.",
                    403: "Your role cannot open this page.", 404: "There is no such page."}
        code = exc.code or 500
        return render_template("error.html", message=messages.get(code, exc.name)), code


def create_app(config: ConsoleConfig | None = None) -> Flask:
    config = config or load_config()
    logs.configure(SERVICE, config.settings.get("LOG_LEVEL"))
    app = Flask(__name__)
    app.secret_key = config.secret_key
    app.json.sort_keys = False  # type: ignore[attr-defined]  # chart data keeps its order
    app.extensions["console"] = config
    app.extensions["verifier"] = TokenVerifier.from_settings(config.settings)
    app.extensions["http"] = http_session()
    init_security(app, config.secure_cookies)
    app.jinja_env.filters["when"] = _when
    app.jinja_env.globals["status_label"] = forms.plain_status
    for module in (auth, officer, provider, supervisor, admin, live):
        app.register_blueprint(module.bp)
    _errors(app)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    return app
