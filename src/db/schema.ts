import type pg from 'pg';
import type { Logger } from '../log.js';

/**
 * Ordered schema migrations. Each runs once, in its own transaction, and is
 * recorded in `rewrap.schema_version`; later versions only append here.
 */
const migrations: ReadonlyArray<{ version: number; description: string; sql: string }> = [
  {
    version: 1,
    description: 'default vault, payloads, jobs and quarantine',
    sql: `
      CREATE TABLE IF NOT EXISTS public.vault (
        id bigint PRIMARY KEY,
        matter_id text NOT NULL,
        token text NOT NULL,
        wrapped_key bytea NOT NULL,
        kek_id text NOT NULL,
        rotated_at timestamptz
      );
      CREATE INDEX IF NOT EXISTS vault_matter_id_idx ON public.vault (matter_id, id);

      CREATE TABLE IF NOT EXISTS public.vault_payload (
        id bigint PRIMARY KEY,
        iv bytea NOT NULL,
        ciphertext bytea NOT NULL
      );

      CREATE TABLE rewrap.jobs (
        id bigserial PRIMARY KEY,
        kind text NOT NULL,
        table_name text NOT NULL,
        scope jsonb NOT NULL,
        scope_key text NOT NULL,
        target_kek text NOT NULL,
        status text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        checkpoint text,
        scanned bigint NOT NULL DEFAULT 0,
        rewrapped bigint NOT NULL DEFAULT 0,
        conflicts bigint NOT NULL DEFAULT 0,
        failed bigint NOT NULL DEFAULT 0,
        error text
      );
      CREATE INDEX jobs_scope_idx ON rewrap.jobs (scope_key, started_at DESC);

      CREATE TABLE rewrap.quarantine (
        id bigserial PRIMARY KEY,
        job_id bigint REFERENCES rewrap.jobs (id),
        table_name text NOT NULL,
        row_key text NOT NULL,
        matter_id text,
        source_kek text,
        target_kek text,
        error_code text NOT NULL,
        error_message text,
        attempts integer NOT NULL DEFAULT 1,
        first_seen timestamptz NOT NULL DEFAULT now(),
        last_seen timestamptz NOT NULL DEFAULT now(),
        resolved_at timestamptz
      );
      CREATE UNIQUE INDEX quarantine_open_row_idx ON rewrap.quarantine (table_name, row_key)
        WHERE resolved_at IS NULL;
    `,
  },
  {
    version: 2,
    description: 'key records, shredded matters, emergency runs and the audit trail',
    sql: `
      CREATE TABLE rewrap.keys (
        key_arn text PRIMARY KEY,
        key_class text NOT NULL CHECK (key_class IN ('tenant', 'matter', 'audit-signing')),
        matter_id text,
        alias_name text,
        created_at timestamptz NOT NULL DEFAULT now(),
        retired_at timestamptz,
        replaced_by text
      );
      CREATE UNIQUE INDEX keys_live_matter_idx ON rewrap.keys (matter_id)
        WHERE key_class = 'matter' AND retired_at IS NULL;

      CREATE TABLE rewrap.shredded_matters (
        matter_id text PRIMARY KEY,
        kek_arn text NOT NULL,
        deletion_date timestamptz,
        shredded_at timestamptz NOT NULL DEFAULT now()
      );

      CREATE TABLE rewrap.emergency_runs (
        id bigserial PRIMARY KEY,
        compromised_kek text NOT NULL,
        since timestamptz NOT NULL,
        status text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
      );
      CREATE TABLE rewrap.emergency_steps (
        run_id bigint NOT NULL REFERENCES rewrap.emergency_runs (id),
        step text NOT NULL,
        status text NOT NULL,
        detail jsonb NOT NULL DEFAULT '{}',
        error text,
        finished_at timestamptz,
        PRIMARY KEY (run_id, step)
      );

      CREATE TABLE rewrap.audit (
        seq bigint PRIMARY KEY,
        recorded_at timestamptz NOT NULL,
        action text NOT NULL,
        actor text NOT NULL,
        details jsonb NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL,
        mac text NOT NULL,
        mac_key_arn text NOT NULL
      );
      CREATE TABLE rewrap.audit_head (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        seq bigint NOT NULL,
        hash text NOT NULL,
        mac text NOT NULL,
        mac_key_arn text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
    `,
  },
  {
    version: 3,
    description: 'partitioned jobs shared by several processes',
    sql: `
      CREATE TABLE rewrap.fleet_jobs (
        id bigserial PRIMARY KEY,
        table_name text NOT NULL,
        matters text[],
        target text NOT NULL,
        limiter_id text NOT NULL,
        limiter_mode text NOT NULL DEFAULT 'redis' CHECK (limiter_mode IN ('redis', 'local')),
        limiter_mode_at timestamptz NOT NULL DEFAULT now(),
        status text NOT NULL DEFAULT 'running',
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
      );

      CREATE TABLE rewrap.fleet_partitions (
        job_id bigint NOT NULL REFERENCES rewrap.fleet_jobs (id),
        partition integer NOT NULL,
        start_key bigint NOT NULL,
        end_key bigint NOT NULL,
        rows_at_create bigint NOT NULL,
        status text NOT NULL DEFAULT 'pending',
        owner text,
        lease_expires_at timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        checkpoint bigint,
        scanned bigint NOT NULL DEFAULT 0,
        rewrapped bigint NOT NULL DEFAULT 0,
        conflicts bigint NOT NULL DEFAULT 0,
        failed bigint NOT NULL DEFAULT 0,
        error text,
        started_at timestamptz,
        finished_at timestamptz,
        PRIMARY KEY (job_id, partition)
      );

      CREATE TABLE rewrap.fleet_workers (
        job_id bigint NOT NULL REFERENCES rewrap.fleet_jobs (id),
        worker_id text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        limiter_mode text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (job_id, worker_id)
      );
    `,
  },
  {
    version: 4,
    description: 'free space in vault pages for in-place rewrap updates',
    // A rewrap changes no indexed column, so PostgreSQL can update the row in
    // place (a HOT update, no index insert) when its page has free space.
    // The setting applies to pages written from now on; VACUUM FULL applies
    // it to existing ones.
    sql: `ALTER TABLE public.vault SET (fillfactor = 80);`,
  },
];

export const schemaVersion = migrations[migrations.length - 1]?.version ?? 0;

/**
 * Creates or upgrades the default vault table and rewrap's own schema.
 * Idempotent, and safe to run from several processes at once: an advisory
 * lock serialises them. Returns the versions applied by this call.
 */
export async function initSchema(client: pg.ClientBase, logger?: Logger): Promise<number[]> {
  const applied: number[] = [];
  await client.query('SELECT pg_advisory_lock(hashtext($1))', ['rewrap.schema']);
  try {
    await client.query('CREATE SCHEMA IF NOT EXISTS rewrap');
    await client.query(`
      CREATE TABLE IF NOT EXISTS rewrap.schema_version (
        version integer PRIMARY KEY,
        description text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`);
    const { rows } = await client.query<{ version: number }>('SELECT version FROM rewrap.schema_version');
    const done = new Set(rows.map((row) => row.version));
    for (const migration of migrations) {
      if (done.has(migration.version)) continue;
      await client.query('BEGIN');
      try {
        await client.query(migration.sql);
        await client.query('INSERT INTO rewrap.schema_version (version, description) VALUES ($1, $2)', [
          migration.version,
          migration.description,
        ]);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK');
        throw error;
      }
      applied.push(migration.version);
      logger?.info({ event: 'schema.migrate', version: migration.version }, migration.description);
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock(hashtext($1))', ['rewrap.schema']);
  }
  return applied;
}
