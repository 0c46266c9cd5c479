from servicekit.db import alembic_env

from notifications.tables import metadata

alembic_env(metadata)
