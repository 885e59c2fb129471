import pg from 'pg';

/** Another job already rotates this scope, or an overlapping one. The CLI maps it to exit status 75. */
export class ScopeBusyError extends Error {
  override name = 'ScopeBusyError';
}

export interface ScopeLock {
  release(): Promise<void>;
}

/**
 * Takes the session-level advisory locks of a scope on a dedicated
 * connection, held for the whole job. A job over all matters takes the
 * table's lock exclusively; a job over some matters takes it shared, plus
 * one exclusive lock per matter. Overlapping scopes therefore exclude each
 * other, and disjoint matter lists run side by side. A crashed job's locks
 * vanish with its connection.
 */
export async function acquireScopeLock(databaseUrl: string, tableName: string, matters: string[] | null): Promise<ScopeLock> {
  const client = new pg.Client({ connectionString: databaseUrl });
  // The lock connection sits idle for the whole job; a failure on it only
  // means the locks are gone, which the job cannot repair, so it is ignored.
  client.on('error', () => undefined);
  await client.connect();
  try {
    const tableKey = `rewrap.rotate:${tableName}`;
    const fn = matters === null ? 'pg_try_advisory_lock' : 'pg_try_advisory_lock_shared';
    const table = await client.query<{ ok: boolean }>(`SELECT ${fn}(hashtext($1)) AS ok`, [tableKey]);
    if (table.rows[0]?.ok !== true) {
      throw new ScopeBusyError(`another rewrap job holds ${matters === null ? 'all matters' : 'a matter'} of table ${tableName}; wait for it to finish or stop it`);
    }
    for (const matter of [...(matters ?? [])].sort()) {
      const row = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [`${tableKey}:${matter}`]);
      if (row.rows[0]?.ok !== true) {
        throw new ScopeBusyError(`another rewrap job holds matter "${matter}" of table ${tableName}; wait for it to finish or stop it`);
      }
    }
  } catch (error) {
    await client.end().catch(() => undefined);
    throw error;
  }
  return {
    async release() {
      await client.end();
    },
  };
}
