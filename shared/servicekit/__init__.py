"""The service kit shared by every referral-routing service.

Nothing in this package opens a connection, reads the environment or builds an
engine at import time: services build what they need from a ``Settings`` object
in their composition root (``bootstrap.py``).
"""
