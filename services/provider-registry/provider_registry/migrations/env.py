from provider_registry.tables import metadata
from servicekit.db import alembic_env

alembic_env(metadata)
