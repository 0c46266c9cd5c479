"""The web console: officers, providers, supervisors and admins meet the product here."""
