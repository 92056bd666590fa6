-- The role the consumers connect as: they read and write rows, nothing more. They cannot create,
-- alter, drop or truncate a table, nor touch the migration ledger (they read it, to know the schema
-- is current). Migrations run as the schema's owner, whose later tables this role is granted by
-- default. A login is given to it by `noetl db migrate` when NOETL_CONSUMER_DB_PASSWORD is set
-- (`noetl.store.roles`), or by a deployment's own role granted `noetl_consumer`.
-- A migrator that may not create roles (a managed service) leaves the role to its administrator.
DO $$
DECLARE
    schema_name text := current_schema();
BEGIN
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'noetl_consumer') THEN
            CREATE ROLE noetl_consumer NOLOGIN;
        END IF;
    EXCEPTION
        WHEN duplicate_object OR unique_violation THEN NULL;  -- another database of the cluster made it
        WHEN insufficient_privilege THEN
            RAISE NOTICE 'noetl: cannot create role noetl_consumer; consumers need their own role';
            RETURN;
    END;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO noetl_consumer', schema_name);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO noetl_consumer', schema_name);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO noetl_consumer', schema_name);
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %I.schema_migrations FROM noetl_consumer', schema_name);
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO noetl_consumer',
        schema_name
    );
    EXECUTE format(
        'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO noetl_consumer', schema_name
    );
END $$;
