import type pg from 'pg';

export interface QuarantineEntry {
  id: string;
  jobId: string | null;
  tableName: string;
  rowKey: string;
  matterId: string | null;
  sourceKek: string | null;
  targetKek: string | null;
  errorCode: string;
  errorMessage: string | null;
  attempts: number;
  firstSeen: Date;
  lastSeen: Date;
}

export interface QuarantineFilter {
  tableName?: string | undefined;
  matters?: string[] | undefined;
  /** Quarantine record ids. */
  ids?: string[] | undefined;
}

function whereClause(filter: QuarantineFilter): { sql: string; params: unknown[] } {
  const conditions = ['resolved_at IS NULL'];
  const params: unknown[] = [];
  if (filter.tableName !== undefined) {
    params.push(filter.tableName);
    conditions.push(`table_name = $${params.length}`);
  }
  if (filter.matters !== undefined && filter.matters.length > 0) {
    params.push(filter.matters);
    conditions.push(`matter_id = ANY($${params.length}::text[])`);
  }
  if (filter.ids !== undefined && filter.ids.length > 0) {
    params.push(filter.ids);
    conditions.push(`id = ANY($${params.length}::bigint[])`);
  }
  return { sql: conditions.join(' AND '), params };
}

/** Lists the open quarantine records, oldest first. Records hold no key value. */
export async function listQuarantine(client: pg.ClientBase, filter: QuarantineFilter = {}, limit = 1000): Promise<QuarantineEntry[]> {
  const where = whereClause(filter);
  const { rows } = await client.query(
    `SELECT id::text, job_id::text, table_name, row_key, matter_id, source_kek, target_kek, error_code,
            error_message, attempts, first_seen, last_seen
     FROM rewrap.quarantine WHERE ${where.sql} ORDER BY quarantine.id LIMIT ${Number(limit)}`,
    where.params,
  );
  return rows.map((row) => ({
    id: row.id,
    jobId: row.job_id,
    tableName: row.table_name,
    rowKey: row.row_key,
    matterId: row.matter_id,
    sourceKek: row.source_kek,
    targetKek: row.target_kek,
    errorCode: row.error_code,
    errorMessage: row.error_message,
    attempts: row.attempts,
    firstSeen: row.first_seen,
    lastSeen: row.last_seen,
  }));
}

/**
 * Releases quarantined rows so that the next `rotate` of their scope reads
 * them again, for instance after a disabled source key was re-enabled or
 * the application repaired a blob. Returns the number of rows released.
 * A row that fails again is quarantined again, with its attempt count kept.
 */
export async function releaseQuarantine(client: pg.ClientBase, filter: QuarantineFilter): Promise<number> {
  const where = whereClause(filter);
  const result = await client.query(`UPDATE rewrap.quarantine SET resolved_at = now() WHERE ${where.sql}`, where.params);
  return result.rowCount ?? 0;
}
