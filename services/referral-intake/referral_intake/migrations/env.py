from servicekit.db import alembic_env

from referral_intake.tables import metadata

alembic_env(metadata)
