"""`python -m notifications api|worker|migrate` (also `referrals ... `)."""
from servicekit.service_cli import service_group

from . import bootstrap

cli = service_group(bootstrap)

if __name__ == "__main__":
    cli()
