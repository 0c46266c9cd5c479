from servicekit.db import alembic_env

from provider_registry.tables import metadata

alembic_env(metadata)
