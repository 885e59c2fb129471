import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { defaultVaultTable, quoteVaultTable, type VaultTable } from '../db/table.js';

export const minBigint = '-9223372036854775808';
export const maxBigint = '9223372036854775807';

export interface CreateJobOptions {
  client: pg.ClientBase;
  table?: VaultTable | undefined;
  /** Matter ids to rotate; null rotates every matter of the table. */
  matters: string[] | null;
  /** Target key as the user named it; each process resolves it through the KMS. */
  target: string;
  partitions: number;
}

export interface CreatedJob {
  jobId: string;
  partitions: Array<{ partition: number; startKey: string; endKey: string; rows: number }>;
}

/**
 * Records a job and splits the table's bigint key space into `partitions`
 * contiguous ranges holding about the same number of the scope's rows.
 * The first range starts at the smallest bigint and the last ends at the
 * largest, so rows inserted after the split still fall into some range.
 * Fewer partitions are made when the scope has fewer rows than asked for.
 */
export async function createJob(options: CreateJobOptions): Promise<CreatedJob> {
  const table = options.table ?? defaultVaultTable;
  const t = quoteVaultTable(table);
  const matterFilter = options.matters === null ? '' : `WHERE ${t.matter} = ANY($2::text[])`;
  const params: unknown[] = [options.partitions];
  if (options.matters !== null) params.push(options.matters);

  // NOTE: ntile reads every key of the scope once; on a very large table this split takes a full scan.
  const { rows: buckets } = await options.client.query<{ first_key: string; rows: string }>(
    `SELECT min(k)::text AS first_key, count(*)::text AS rows
     FROM (SELECT ${t.key} AS k, ntile($1) OVER (ORDER BY ${t.key}) AS bucket FROM ${t.table} ${matterFilter}) s
     GROUP BY bucket ORDER BY bucket`,
    params,
  );

  const ranges: CreatedJob['partitions'] = [];
  if (buckets.length === 0) {
    ranges.push({ partition: 0, startKey: minBigint, endKey: maxBigint, rows: 0 });
  }
  for (let i = 0; i < buckets.length; i++) {
    const next = buckets[i + 1];
    ranges.push({
      partition: i,
      startKey: i === 0 ? minBigint : buckets[i]!.first_key,
      endKey: next === undefined ? maxBigint : (BigInt(next.first_key) - 1n).toString(),
      rows: Number(buckets[i]!.rows),
    });
  }

  await options.client.query('BEGIN');
  try {
    const limiterId = `rewrap-${randomBytes(6).toString('hex')}`;
    const inserted = await options.client.query<{ id: string }>(
      `INSERT INTO rewrap.fleet_jobs (table_name, matters, target, limiter_id) VALUES ($1, $2, $3, $4) RETURNING id::text`,
      [table.name, options.matters, options.target, limiterId],
    );
    const jobId = inserted.rows[0]!.id;
    await options.client.query(
      `INSERT INTO rewrap.fleet_partitions (job_id, partition, start_key, end_key, rows_at_create)
       SELECT $1, p, s, e, r FROM unnest($2::int[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u(p, s, e, r)`,
      [
        jobId,
        ranges.map((range) => range.partition),
        ranges.map((range) => range.startKey),
        ranges.map((range) => range.endKey),
        ranges.map((range) => range.rows),
      ],
    );
    await options.client.query('COMMIT');
    return { jobId, partitions: ranges };
  } catch (error) {
    await options.client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

export interface JobRecord {
  id: string;
  tableName: string;
  matters: string[] | null;
  target: string;
  limiterId: string;
  status: string;
}

export async function readJob(client: pg.ClientBase | pg.Pool, jobId: string): Promise<JobRecord | null> {
  const { rows } = await client.query<{ id: string; table_name: string; matters: string[] | null; target: string; limiter_id: string; status: string }>(
    'SELECT id::text, table_name, matters, target, limiter_id, status FROM rewrap.fleet_jobs WHERE id = $1',
    [jobId],
  );
  const row = rows[0];
  if (row === undefined) return null;
  return { id: row.id, tableName: row.table_name, matters: row.matters, target: row.target, limiterId: row.limiter_id, status: row.status };
}

export interface PartitionStatus {
  partition: number;
  startKey: string;
  endKey: string;
  status: string;
  owner: string | null;
  /** Seconds until the lease expires; negative once it has expired, null when none is held. */
  leaseSeconds: number | null;
  attempts: number;
  rowsAtCreate: number;
  scanned: number;
  rewrapped: number;
  conflicts: number;
  failed: number;
  checkpoint: string | null;
  error: string | null;
}

export interface JobStatusReport {
  jobId: string;
  status: string;
  target: string;
  matters: string[] | null;
  liveWorkers: number;
  partitions: PartitionStatus[];
  rowsAtCreate: number;
  rewrapped: number;
  /** Rewrapped rows per second since the first partition started. */
  rate: number;
  /** Estimated seconds left, from the rows counted at creation and the rate; null while the rate is 0. */
  etaSeconds: number | null;
}

/** Reads a job's partitions and derives its rate and estimated time left. */
export async function readJobStatus(client: pg.ClientBase | pg.Pool, jobId: string, leaseMs: number): Promise<JobStatusReport | null> {
  const job = await readJob(client, jobId);
  if (job === null) return null;
  const { rows } = await client.query<{
    partition: number;
    start_key: string;
    end_key: string;
    status: string;
    owner: string | null;
    lease_seconds: number | null;
    attempts: number;
    rows_at_create: string;
    scanned: string;
    rewrapped: string;
    conflicts: string;
    failed: string;
    checkpoint: string | null;
    error: string | null;
  }>(
    `SELECT partition, start_key::text, end_key::text, status, owner,
            CASE WHEN status = 'running' THEN extract(epoch FROM lease_expires_at - now())::float8 END AS lease_seconds,
            attempts, rows_at_create::text, scanned::text, rewrapped::text, conflicts::text, failed::text,
            checkpoint::text, error
     FROM rewrap.fleet_partitions WHERE job_id = $1 ORDER BY partition`,
    [jobId],
  );
  const timing = await client.query<{ elapsed: number | null; live: string }>(
    `SELECT extract(epoch FROM coalesce(j.finished_at, now()) - (SELECT min(started_at) FROM rewrap.fleet_partitions WHERE job_id = j.id))::float8 AS elapsed,
            (SELECT count(*) FROM rewrap.fleet_workers w
             WHERE w.job_id = j.id AND w.heartbeat_at > now() - $2 * interval '1 millisecond')::text AS live
     FROM rewrap.fleet_jobs j WHERE j.id = $1`,
    [jobId, leaseMs],
  );
  const partitions: PartitionStatus[] = rows.map((row) => ({
    partition: row.partition,
    startKey: row.start_key,
    endKey: row.end_key,
    status: row.status,
    owner: row.owner,
    leaseSeconds: row.lease_seconds === null ? null : Math.round(row.lease_seconds * 10) / 10,
    attempts: row.attempts,
    rowsAtCreate: Number(row.rows_at_create),
    scanned: Number(row.scanned),
    rewrapped: Number(row.rewrapped),
    conflicts: Number(row.conflicts),
    failed: Number(row.failed),
    checkpoint: row.checkpoint,
    error: row.error,
  }));
  const rowsAtCreate = partitions.reduce((sum, p) => sum + p.rowsAtCreate, 0);
  const rewrapped = partitions.reduce((sum, p) => sum + p.rewrapped, 0);
  const settled = partitions.reduce((sum, p) => sum + p.rewrapped + p.conflicts + p.failed, 0);
  const elapsed = timing.rows[0]?.elapsed ?? null;
  const rate = elapsed === null || elapsed <= 0 ? 0 : rewrapped / elapsed;
  const unfinished = partitions.some((p) => p.status === 'pending' || p.status === 'running');
  // NOTE: rows already on the target when the job was created count as left, so the estimate can run long.
  const etaSeconds = !unfinished ? 0 : rate > 0 ? Math.max(0, rowsAtCreate - settled) / rate : null;
  return {
    jobId,
    status: job.status,
    target: job.target,
    matters: job.matters,
    liveWorkers: Number(timing.rows[0]?.live ?? 0),
    partitions,
    rowsAtCreate,
    rewrapped,
    rate: Math.round(rate),
    etaSeconds: etaSeconds === null ? null : Math.round(etaSeconds),
  };
}
