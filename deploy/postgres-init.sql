-- PostgreSQL bootstrap for `docker compose up` (DESIGN.md §2, §10): one database per service.
--
-- The postgres image runs this file once, as the superuser, when its data volume is empty
-- (mounted into /docker-entrypoint-initdb.d/ by docker-compose.yml). Each service gets its
-- own login role that owns its own database, and PUBLIC may not connect to any of them, so
-- "no service reads another's tables" holds in the server, not only by convention.
--
-- The passwords are development-only placeholders, repeated in docker-compose.yml's
-- <PREFIX>_DATABASE_URL values. Production uses a managed PostgreSQL whose credentials come
-- from a secret store; never reuse these.
--
-- tests/contracts/test_compose_contract.py parses the CREATE ROLE / CREATE DATABASE lines
-- below and checks every service's database URL against them.

CREATE ROLE referral_intake LOGIN PASSWORD 'referral_intake_dev';
CREATE DATABASE referral_intake OWNER referral_intake;
REVOKE ALL ON DATABASE referral_intake FROM PUBLIC;

CREATE ROLE provider_registry LOGIN PASSWORD 'provider_registry_dev';
CREATE DATABASE provider_registry OWNER provider_registry;
REVOKE ALL ON DATABASE provider_registry FROM PUBLIC;

CREATE ROLE matching LOGIN PASSWORD 'matching_dev';
CREATE DATABASE matching OWNER matching;
REVOKE ALL ON DATABASE matching FROM PUBLIC;

CREATE ROLE notifications LOGIN PASSWORD 'notifications_dev';
CREATE DATABASE notifications OWNER notifications;
REVOKE ALL ON DATABASE notifications FROM PUBLIC;
