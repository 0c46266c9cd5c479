from servicekit.db import alembic_env

from matching.tables import metadata

alembic_env(metadata)
