"""Demo identities and directory for the embedded default (`referrals seed`, `make up`).

Fixed ids so tokens printed by `make up`, the README walk-through and the tests agree.
"""
from __future__ import annotations

AGENCY = "metro-pd"
DEMO_ORG_ID = "7a0c3c55-1f43-4a8e-9b6f-3f1d2c9e0a11"  # Harbor Housing Collective
DEMO_ORG_NAME = "Harbor Housing Collective"
DEMO_SERVICE_ID = "3c2f8d6e-5b1a-4c7d-8e9f-0a1b2c3d4e5f"  # emergency shelter intake
DEMO_ORG2_ID = "b1e2d3c4-a5b6-4789-9abc-def012345678"  # Northside Youth & Family Center
DEMO_ORG2_NAME = "Northside Youth & Family Center"
DEMO_SERVICE2_ID = "9d8c7b6a-5f4e-4d3c-8b2a-1908f7e6d5c4"  # youth mental-health drop-in

# (role, sub, agency, org)
DEMO_USERS: list[tuple[str, str, str | None, str | None]] = [
    ("officer", "officer-ortiz", AGENCY, None),
    ("provider", "provider-harbor-staff", None, DEMO_ORG_ID),
    ("provider", "provider-northside-staff", None, DEMO_ORG2_ID),
    ("supervisor", "supervisor-chen", AGENCY, None),
    ("admin", "admin-patel", None, None),
]
