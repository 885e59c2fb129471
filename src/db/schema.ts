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
