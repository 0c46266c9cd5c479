"""Pure parts of the console: form -> API body, API errors -> field messages, dashboard
figures, the SSE parser, and how API answers become errors (no I/O beyond a local app)."""
from __future__ import annotations

import socket
import threading

import pytest
from console_testkit import Served
from werkzeug.datastructures import MultiDict

from console import charts, forms
from console.client import ApiClient, ApiError, SessionExpired, Unavailable
from console.security import safe_next
from console.views.live import sse_events
from servicekit.web import Problem, create_base_app


def test_form_becomes_the_intake_body_with_empty_fields_left_out() -> None:
    form = MultiDict([("need", "housing"), ("urgency", "urgent"),
                      ("subject.given_name", " Ana "), ("subject.family_name", ""),
                      ("subject.age", "34"), ("location.lat", "47.6"), ("location.lon", "-122.3"),
                      ("consent.share_with_provider", "no"),
                      ("consent.referrer_updates", "milestones"),
                      ("consent.contact_methods", "phone"), ("consent.contact_methods", "sms"),
                      ("consent.obtained_via", "verbal"), ("csrf_token", "x"),
                      ("idempotency_key", "k")])
    body = forms.referral_body(form)
    assert body == {"need": "housing", "urgency": "urgent",
                    "subject": {"given_name": "Ana", "age": 34},
                    "location": {"lat": "47.6", "lon": "-122.3"},
                    "consent": {"share_with_provider": False, "referrer_updates": "milestones",
                                "contact_methods": ["phone", "sms"], "obtained_via": "verbal"},
                    "flags": []}


def test_non_numeric_age_is_passed_on_for_the_api_to_refuse() -> None:
    body = forms.referral_body(MultiDict([("subject.age", "thirty")]))
    assert body["subject"]["age"] == "thirty"
    assert "need" not in body and body["consent"] == {"contact_methods": []}


def test_nested_api_errors_map_to_dotted_fields_in_plain_language() -> None:
    errors = {"subject": {"phone": ["Not an E.164 phone number (+15551234567)."],
                          "given_name": ["Missing data for required field."]},
              "consent": {"contact_methods": {"1": ["Must be one of: phone, sms."]}},
              "need": ["Missing data for required field."]}
    assert forms.field_errors(errors) == {
        "subject.phone": "Not an E.164 phone number (+15551234567).",
        "subject.given_name": "This is required.",
        "consent.contact_methods": "Must be one of: phone, sms.",
        "need": "This is required.",
    }


def test_funnel_counts_every_stage_a_referral_passed() -> None:
    assert charts.funnel({"completed": 2, "offered": 1, "unmatched": 3, "on_hold": 1,
                          "entered_in_error": 5}) == {
        "submitted": 7, "offered": 4, "accepted": 3, "in_progress": 3, "completed": 2}


def test_dashboard_figures_come_from_intake_stats() -> None:
    stats = {"total": 4, "by_status": {"accepted": 1, "unmatched": 3}, "completion_rate": None,
             "time_to_accept": {"count": 1, "median_s": 90.0, "p90_s": 120.0},
             "time_to_first_contact": {"count": 0, "median_s": None, "p90_s": None},
             "sla_breaches": 2,
             "by_need": {"housing": {"unmatched": 2}, "food": {"unmatched": 1},
                         "legal": {"unmatched": 0}},
             "by_area": {"c23n": {"unmatched": 3}},
             "by_week": {"2026-W48": {"sla_breaches": 2}}}
    d = charts.from_stats(stats)
    assert d["total"] == 4 and d["funnel"]["submitted"] == 4 and d["funnel"]["accepted"] == 1
    assert d["timings"]["accept, median"] == 1.5 and d["timings"]["first contact, median"] is None
    assert d["unmatched_by_need"] == {"housing": 2, "food": 1}
    assert d["sla_by_week"] == {"2026-W48": 2} and d["sla_total"] == 2


def test_list_fallback_never_invents_timings_or_breaches() -> None:
    d = charts.from_list([{"status": "unmatched", "need": "food",
                           "coarse_location": {"geohash": "c23nb6"}}, {"status": "offered"}])
    assert d["total"] == 2 and d["funnel"]["offered"] == 1
    assert d["timings"] is None and d["sla_by_week"] is None
    assert d["unmatched_by_area"] == {"c23n": 1}


def test_sse_parser_joins_data_lines_keeps_ids_and_drops_comments() -> None:
    chunks = [b": hello\n\nid: 7\nevent: notif", b"ication\ndata: {\"a\":\ndata: 1}\n\n",
              b"data: two\r\n\r\n"]
    assert list(sse_events(iter(chunks))) == [("7", '{"a":\n1}'), (None, "two")]


@pytest.mark.parametrize("target,expected", [
    ("/referrals/new", "/referrals/new"), ("//evil.example", None),
    ("https://evil.example/x", None), ("/\\evil", None), (None, None), ("relative", None)])
def test_only_local_paths_are_followed_after_sign_in(target: str | None,
                                                     expected: str | None) -> None:
    assert safe_next(target) == expected


def test_a_missing_route_is_unavailable_but_a_missing_record_is_an_error() -> None:
    app, _api = create_base_app("fake", readiness=[])

    @app.get("/v1/things/<name>")
    def thing(name: str) -> dict[str, str]:
        if name == "expired":
            raise Problem(401, "Unauthorized", "token expired")
        raise Problem(404, "Not Found", "No such thing visible to you")

    served = Served(app)
    try:
        client = ApiClient({"fake": served.url}, "token", 5)
        with pytest.raises(Unavailable):
            client.get("fake", "/v1/nothing-here")
        with pytest.raises(Unavailable):
            client.post("fake", "/v1/things/x", {})  # 405
        with pytest.raises(ApiError) as missing:
            client.get("fake", "/v1/things/x")
        assert type(missing.value) is ApiError and missing.value.status == 404
        with pytest.raises(SessionExpired):
            client.get("fake", "/v1/things/expired")
        with pytest.raises(ApiError) as down:
            ApiClient({"fake": "http://127.0.0.1:9"}, None, 2).get("fake", "/")
        assert down.value.status == 503
    finally:
        served.close()


class _DropsEveryOtherConnection:
    """An HTTP server on a raw socket that closes every other connection it accepts without
    answering (as an api closing an idle keep-alive connection just as a request comes)
    and answers the others with a small JSON body; counts what it accepted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.recv(65536)
                if self.accepted % 2:
                    continue  # closed unanswered
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 12\r\nConnection: close\r\n\r\n{\"ok\": true}")


def test_an_idempotent_call_dropped_unanswered_is_sent_once_more_but_a_post_is_not() -> None:
    server = _DropsEveryOtherConnection()
    try:
        client = ApiClient({"fake": server.url}, "token", 5)
        assert client.get("fake", "/v1/things") == {"ok": True}
        assert server.accepted == 2  # dropped, then answered
        assert client.put("fake", "/v1/things/x/capacity", {"maximum": 1}) == {"ok": True}
        assert server.accepted == 4
        with pytest.raises(ApiError) as down:  # a POST is never sent twice by the client
            client.post("fake", "/v1/referrals", {})
        assert down.value.status == 503 and server.accepted == 5
    finally:
        server.sock.close()
