"""Consent changes apply at once everywhere; erasure crypto-shreds the resident."""
from __future__ import annotations

from typing import Any

import pytest
from intake_testkit import CANARY, Intake

from servicekit import crypto, events

pytestmark = pytest.mark.integration


def _consent(**over: Any) -> dict[str, Any]:
    return {"share_with_provider": True, "referrer_updates": "full",
            "contact_methods": ["phone", "email"], "obtained_via": "verbal", **over}


def test_narrowing_contact_methods_hides_the_channel_at_once(intake: Intake) -> None:
    rid, _, org = intake.offered()
    before = intake.client.get(f"/v1/referrals/{rid}", headers=intake.provider(org)).get_json()
    assert before["contact"]["phone"] == CANARY["phone"]
    assert before["contact"]["email"] == CANARY["email"]
    resp = intake.client.put(f"/v1/referrals/{rid}/consent", headers=intake.officer(),
                             json=_consent(contact_methods=["email"]))
    assert resp.status_code == 200 and len(resp.get_json()["history"]) == 2
    after = intake.client.get(f"/v1/referrals/{rid}", headers=intake.provider(org)).get_json()
    assert "phone" not in after["contact"] and after["contact"]["email"] == CANARY["email"]
    [changed] = intake.events(events.REFERRAL_CONSENT_CHANGED)
    assert changed.data["consent"]["contact_methods"] == ["email"]
    assert changed.data["officer_ref"] and changed.data["short_id"]


def test_revoking_sharing_withdraws_the_open_offer(intake: Intake) -> None:
    rid, _, org = intake.offered()
    resp = intake.client.put(f"/v1/referrals/{rid}/consent", headers=intake.supervisor(),
                             json=_consent(share_with_provider=False))
    assert resp.status_code == 200
    last = intake.events(events.REFERRAL_STATUS_CHANGED)[-1].data
    assert (last["from_status"], last["to_status"], last["reason_code"]) == (
        "offered", "submitted", "consent_revoked")
    assert last["offer"]["status"] == "withdrawn"
    assert intake.client.get(f"/v1/referrals/{rid}",
                             headers=intake.provider(org)).status_code == 404
    # the next provider sees a de-identified referral only
    _, org2 = intake.propose(rid)
    view = intake.client.get(f"/v1/referrals/{rid}", headers=intake.provider(org2)).get_json()
    assert view["contact"] is None and CANARY["phone"] not in str(view)


def test_referrer_updates_none_hides_progress_from_the_officer(intake: Intake) -> None:
    rid, _, org = intake.offered()
    intake.post(f"/v1/referrals/{rid}/accept", intake.provider(org))
    full = intake.client.get(f"/v1/referrals/{rid}", headers=intake.officer()).get_json()
    assert full["status"] == "accepted"
    intake.client.put(f"/v1/referrals/{rid}/consent", headers=intake.officer(),
                      json=_consent(referrer_updates="milestones"))
    ms = intake.client.get(f"/v1/referrals/{rid}", headers=intake.officer()).get_json()
    assert ms["status"] == "connected" and "provider" not in ms
    intake.client.put(f"/v1/referrals/{rid}/consent", headers=intake.officer(),
                      json=_consent(referrer_updates="none"))
    none = intake.client.get(f"/v1/referrals/{rid}", headers=intake.officer()).get_json()
    assert none["status"] == "submitted"
    tl = intake.client.get(f"/v1/referrals/{rid}/timeline", headers=intake.officer()).get_json()
    assert [e["status"] for e in tl["items"]] == ["submitted"]


def test_consent_change_validates_every_field(intake: Intake) -> None:
    rid = intake.submit()["id"]
    resp = intake.client.put(f"/v1/referrals/{rid}/consent", headers=intake.officer(),
                             json=_consent(contact_methods=["pigeon"], referrer_updates="x"))
    assert resp.status_code == 422
    assert "contact_methods" in resp.get_json()["detail"]
    assert "referrer_updates" in resp.get_json()["detail"]
    assert intake.events(events.REFERRAL_CONSENT_CHANGED) == []


def test_erasure_shreds_the_key_of_every_referral_of_the_resident(intake: Intake) -> None:
    first, _, org = intake.offered()
    second = intake.post("/v1/referrals", intake.officer(), {
        "need": "food", "urgency": "routine", "same_subject_as": first,
        "consent": _consent()}).get_json()["id"]
    assert intake.client.delete(f"/v1/referrals/{first}/subject",
                                headers=intake.officer()).status_code == 403
    resp = intake.client.delete(f"/v1/referrals/{first}/subject", headers=intake.supervisor())
    assert resp.status_code == 200
    assert sorted(resp.get_json()["referral_ids"]) == sorted([first, second])
    erased = intake.events(events.REFERRAL_ERASED)
    assert sorted(e.subject for e in erased) == sorted([first, second])
    # no key in the ring opens the stored ciphertext: the wrapped data key is gone
    [(wrapped, phone_ct)] = intake.sql("SELECT wrapped_key, phone_ct FROM subjects")
    assert wrapped is None and phone_ct is not None
    ring = intake.ctx.keysource.current()
    assert ring.kids  # the ring itself is intact, but holds nothing for this subject
    view = intake.client.get(f"/v1/referrals/{first}", headers=intake.provider(org)).get_json()
    assert view["contact"] is None and CANARY["family_name"] not in str(view)
    again = intake.client.delete(f"/v1/referrals/{first}/subject", headers=intake.supervisor())
    assert again.status_code == 200 and len(intake.events(events.REFERRAL_ERASED)) == 2
    glass = intake.post(f"/v1/referrals/{first}/pii-access", intake.supervisor(),
                        {"reason": "welfare check requested by resident"})
    assert glass.status_code == 422


def test_erased_ciphertext_cannot_be_opened_with_any_ring_key(intake: Intake) -> None:
    rid = intake.submit()["id"]
    [(sid, wrapped, phone_ct)] = intake.sql("SELECT id, wrapped_key, phone_ct FROM subjects")
    intake.client.delete(f"/v1/referrals/{rid}/subject", headers=intake.supervisor())
    ring = intake.ctx.keysource.current()
    # even the ring's own keys, tried directly as data keys, open nothing
    for kid in ring.kids:
        key = crypto.Keyring.from_json(ring.to_json())._keys[kid]
        with pytest.raises(crypto.DecryptionError):
            crypto.decrypt_field(key, phone_ct, table="subjects", column="phone", row_id=sid,
                                 key_version=1)
    assert intake.sql("SELECT wrapped_key FROM subjects")[0][0] is None
    assert wrapped is not None  # it existed before erasure
