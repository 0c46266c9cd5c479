from matching.tables import metadata
from servicekit.db import alembic_env

alembic_env(metadata)
