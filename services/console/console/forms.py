"""The officer's referral form: choices in plain language, form -> API body, API errors ->
messages next to the field.

Values are passed to the API as typed; the API validates them (one set of rules, in the
service that owns them). The console only drops empty fields and maps the answer.
"""
from __future__ import annotations

from typing import Any

from servicekit import events

NEED_LABELS = {
    "housing": "Housing or shelter", "mental_health": "Mental health",
    "substance_use": "Substance use", "youth": "Youth services", "food": "Food",
    "domestic_violence": "Domestic violence support", "medical": "Medical care",
    "legal": "Legal help", "employment": "Employment", "other": "Something else",
}
URGENCY_LABELS = {
    "emergency": ("Emergency", "Needs help within hours; providers have 15 minutes to answer."),
    "urgent": ("Urgent", "Needs help within a day."),
    "routine": ("Routine", "Within a few days is fine."),
}
SHARE_CHOICES = {
    "yes": "Yes: the provider that takes this referral may see the resident's name and "
           "contact details, so they can reach out.",
    "no": "No: providers see only the need, urgency and rough area. Nobody can contact "
          "the resident through this referral.",
}
UPDATE_CHOICES = {
    "none": "None: you will only see that the referral was submitted.",
    "milestones": "Milestones: you will see when it was received and whether the resident "
                  "was connected, without the provider's name or details.",
    "full": "Full: you will also see which provider took it and the outcome.",
}
CONTACT_LABELS = {"phone": "Phone call", "sms": "Text message", "email": "Email",
                  "in_person": "In person"}
OBTAINED_LABELS = {"verbal": "Said so out loud", "written": "Signed a form",
                   "electronic": "Agreed on a device"}
FLAG_LABELS = {"veteran": "Veteran", "youth": "Young person", "family": "Family with children",
               "disability": "Has a disability", "pregnant": "Pregnant", "lgbtq": "LGBTQ+"}
STATUS_LABELS = {
    "submitted": "Submitted", "received": "Received by a provider", "offered": "Offered",
    "unmatched": "Waiting for a provider", "accepted": "Accepted", "in_progress": "In progress",
    "on_hold": "On hold", "connected": "Resident connected", "completed": "Completed",
    "failed": "Closed, not connected", "cancelled": "Cancelled",
    "entered_in_error": "Entered in error", "closed_connected": "Closed: connected",
    "closed_not_connected": "Closed: not connected",
}
_PLAIN = {
    "Missing data for required field.": "This is required.",
    "Not a valid integer.": "Enter a whole number.",
    "Not a valid number.": "Enter a number.",
    "Not a valid email address.": "Enter an email address like name@example.org.",
    "Not a valid date.": "Enter a date as year-month-day.",
    "Unknown field.": "This field is not accepted.",
    "Not a valid boolean.": "Choose yes or no.",
    "Field may not be null.": "This is required.",
}
TEXT_FIELDS = ("subject.given_name", "subject.family_name", "subject.age",
               "subject.birth_date", "subject.phone", "subject.email",
               "subject.preferred_language", "subject.gender", "location.lat",
               "location.lon", "notes")
assert set(NEED_LABELS) == set(events.NEEDS) and set(URGENCY_LABELS) == set(events.URGENCIES)


def referral_body(form: Any) -> dict[str, Any]:
    """The intake API's body from the submitted form (a MultiDict, or a dict whose repeated
    fields are lists; empty fields left out). The typed address is not part of it: it only
    served to find the coordinates."""

    def text(name: str) -> str:
        return str(form.get(name, "")).strip()

    def many(name: str) -> list[str]:
        if hasattr(form, "getlist"):
            return list(form.getlist(name))
        value = form.get(name) or []
        return list(value) if isinstance(value, list) else [value]

    subject: dict[str, Any] = {k.split(".", 1)[1]: text(k) for k in TEXT_FIELDS
               if k.startswith("subject.") and text(k)}
    if subject.get("age", "").isdigit():
        subject["age"] = int(subject["age"])
    if form.get("subject.needs_interpreter"):
        subject["needs_interpreter"] = True
    location = {k.split(".", 1)[1]: text(k) for k in ("location.lat", "location.lon") if text(k)}
    share = text("consent.share_with_provider")
    consent: dict[str, Any] = {
        "share_with_provider": {"yes": True, "no": False}.get(share, share or None),
        "referrer_updates": text("consent.referrer_updates") or None,
        "contact_methods": many("consent.contact_methods"),
        "obtained_via": text("consent.obtained_via") or None,
    }
    body: dict[str, Any] = {
        "need": text("need") or None, "urgency": text("urgency") or None,
        "subject": subject, "location": location,
        "consent": {k: v for k, v in consent.items() if v is not None},
        "flags": many("flags"),
    }
    if text("notes"):
        body["notes"] = text("notes")
    return {k: v for k, v in body.items() if v is not None}


def field_errors(errors: Any, prefix: str = "") -> dict[str, str]:
    """problem+json ``errors`` (nested marshmallow messages) -> {dotted field: plain text}."""
    out: dict[str, str] = {}
    if isinstance(errors, dict):
        for key, value in errors.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if (key == "_schema" or str(key).isdigit()) and prefix:
                path = prefix  # list items and whole-object errors belong to the parent
            out.update(field_errors(value, path))
        return out
    messages = errors if isinstance(errors, list) else [errors]
    texts = [_PLAIN.get(str(m), str(m)) for m in messages if isinstance(m, str)]
    if texts and prefix:
        out[prefix] = " ".join(texts)
    return out


def plain_status(status: str | None) -> str:
    return STATUS_LABELS.get(status or "", (status or "unknown").replace("_", " ").capitalize())
