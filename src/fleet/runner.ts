import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import pg from 'pg';
import type { Logger } from '../log.js';
import { rotate, RotateUsageError, type RotateProgress, type RotateSummary } from '../rotate/engine.js';
import type { KmsMode } from '../rotate/protocol.js';
import { readJob } from './jobs.js';
import { FleetLimiter, type LimiterMode } from './shared-limiter.js';
import { createWorkerPool } from './worker-pool.js';

export interface FleetRotateOptions {
  databaseUrl: string;
  jobId: string;
  /** Redis URL of the fleet's shared bucket; null gives each host quota / live hosts. */
  redisUrl: string | null;
  /** KMS requests per second for the whole fleet. */
  quota: number;
  kmsEndpoint?: string | undefined;
  kmsRegion?: string | undefined;
  mode?: KmsMode | undefined;
  workers: number;
  batchSize?: number | undefined;
  maxInFlight?: number | undefined;
  /** How long a partition stays leased without a heartbeat before another process takes it over. */
  leaseMs: number;
  /** Leases of one partition after which it is marked failed instead of leased again. */
  maxPartitionAttempts?: number | undefined;
  logger: Logger;
  signal?: AbortSignal | undefined;
}

export interface FleetRotateSummary {
  jobId: string;
  workerId: string;
  /** The job's status when this process left: running while other processes still hold partitions. */
  jobStatus: string;
  /** Partitions this process finished. */
  partitions: number;
  rewrapped: number;
  interrupted: boolean;
}

interface Lease {
  partition: number;
  startKey: string;
  endKey: string;
  checkpoint: string | null;
  attempts: number;
  base: { scanned: number; rewrapped: number; conflicts: number; failed: number };
  controller: AbortController;
  progress: RotateProgress | null;
  lost: boolean;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Runs one process of a partitioned job: leases partitions with
 * `FOR UPDATE SKIP LOCKED`, rotates each through the engine bounded to its
 * key range, renews the lease from a heartbeat, and takes over partitions
 * whose lease expired. Returns when no partition is left pending or
 * running, or when the signal aborts.
 */
export async function runFleetWorker(options: FleetRotateOptions): Promise<FleetRotateSummary> {
  const logger = options.logger;
  const workerId = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  const syncIntervalMs = Math.max(100, Math.min(1_000, Math.floor(options.leaseMs / 3)));
  const maxAttempts = options.maxPartitionAttempts ?? 10;
  const pool = new pg.Pool({ connectionString: options.databaseUrl, max: 3, application_name: 'rewrap-fleet' });
  pool.on('error', (error) => logger.warn({ event: 'db.pool.error', err: error }, 'idle database connection failed'));

  const job = await readJob(pool, options.jobId).catch(async (error: unknown) => {
    await pool.end();
    throw error;
  });
  if (job === null) {
    await pool.end();
    throw new RotateUsageError(`job ${options.jobId} was not found; create one with "rewrap job create"`);
  }

  const limiter = new FleetLimiter({
    quota: options.quota,
    maxBatch: options.batchSize ?? 50,
    redisUrl: options.redisUrl,
    limiterId: job.limiterId,
    jobId: job.id,
    logger,
    syncIntervalMs,
    onFallback: async () => {
      await pool.query(
        `UPDATE rewrap.fleet_jobs SET limiter_mode = 'local', limiter_mode_at = now() WHERE id = $1 AND limiter_mode = 'redis'`,
        [job.id],
      );
    },
    onRedisRestored: async () => {
      // Every host reads the switch time at its next sync, so the switch waits for two of them.
      await pool.query(
        `UPDATE rewrap.fleet_jobs SET limiter_mode = 'redis', limiter_mode_at = now() + $2 * interval '1 millisecond'
         WHERE id = $1 AND limiter_mode = 'local'`,
        [job.id, 2 * syncIntervalMs + 500],
      );
    },
  });

  const workers = Math.max(1, options.workers);
  const maxInFlight = options.maxInFlight ?? Math.min(4096, Math.max(64, Math.ceil(options.quota * 0.05)));
  const batchesInFlight = Math.max(workers, Math.ceil(maxInFlight / limiter.batchSize()));
  const workerPool = createWorkerPool({
    workers,
    tasksPerWorker: Math.ceil(batchesInFlight / workers),
    rowsPerTask: limiter.batchSize(),
    kmsEndpoint: options.kmsEndpoint,
    kmsRegion: options.kmsRegion,
    mode: options.mode ?? 'reencrypt',
  });
  workerPool.on('error', (error) => logger.error({ event: 'pool.error', fleetJobId: job.id, err: error }, 'worker pool error'));

  let current: Lease | null = null;
  let heartbeatRunning = false;
  let heartbeatFailures = 0;
  const heartbeat = async () => {
    if (heartbeatRunning) return;
    heartbeatRunning = true;
    try {
      await pool.query(`UPDATE rewrap.fleet_workers SET heartbeat_at = now(), limiter_mode = $3 WHERE job_id = $1 AND worker_id = $2`, [
        job.id,
        workerId,
        limiter.mode,
      ]);
      const lease = current;
      if (lease !== null && !lease.lost) {
        const renewed = await pool.query(
          `UPDATE rewrap.fleet_partitions SET lease_expires_at = now() + $4 * interval '1 millisecond', ${progressAssignments('$5')}
           WHERE job_id = $1 AND partition = $2 AND owner = $3 AND status = 'running'`,
          [job.id, lease.partition, workerId, options.leaseMs, progressValues(lease)],
        );
        if (renewed.rowCount === 0) {
          lease.lost = true;
          lease.controller.abort();
          logger.warn({ event: 'fleet.lease.lost', fleetJobId: job.id, partition: lease.partition, workerId }, 'partition lease lost to another process; stopping it');
        }
      }
      const state = await pool.query<{ mode: LimiterMode; mode_in_ms: number; live: string }>(
        `SELECT limiter_mode AS mode, (extract(epoch FROM limiter_mode_at - now()) * 1000)::float8 AS mode_in_ms,
                (SELECT count(*) FROM rewrap.fleet_workers w
                 WHERE w.job_id = j.id AND w.heartbeat_at > now() - $2 * interval '1 millisecond')::text AS live
         FROM rewrap.fleet_jobs j WHERE j.id = $1`,
        [job.id, options.leaseMs],
      );
      const row = state.rows[0];
      if (row !== undefined) limiter.sync({ mode: row.mode, modeInMs: row.mode_in_ms, liveHosts: Number(row.live) });
      heartbeatFailures = 0;
    } catch (error) {
      heartbeatFailures += 1;
      logger.warn({ event: 'fleet.heartbeat.failed', fleetJobId: job.id, workerId, failures: heartbeatFailures, err: error }, 'heartbeat failed');
    } finally {
      heartbeatRunning = false;
    }
  };

  // A function, so that TypeScript does not narrow the flag across awaits.
  const aborted = () => options.signal?.aborted === true;
  let finishedPartitions = 0;
  let rewrapped = 0;

  let timer: NodeJS.Timeout | null = null;
  const started = Date.now();

  try {
    await pool.query(
      `INSERT INTO rewrap.fleet_workers (job_id, worker_id, host, pid, limiter_mode) VALUES ($1, $2, $3, $4, $5)`,
      [job.id, workerId, hostname(), process.pid, limiter.mode],
    );
    await heartbeat();
    timer = setInterval(() => void heartbeat(), syncIntervalMs);
    logger.info(
      { event: 'fleet.worker.start', fleetJobId: job.id, workerId, quota: options.quota, redis: options.redisUrl !== null, leaseMs: options.leaseMs },
      'fleet worker started',
    );

    while (!aborted()) {
      const lease = await leasePartition(pool, job.id, workerId, options.leaseMs, logger);
      if (lease === null) {
        const open = await pool.query<{ n: string }>(
          `SELECT count(*)::text AS n FROM rewrap.fleet_partitions WHERE job_id = $1 AND status IN ('pending', 'running')`,
          [job.id],
        );
        if (Number(open.rows[0]?.n ?? 0) === 0) break;
        // Partitions still run under live leases elsewhere; wait in case one expires.
        await sleep(syncIntervalMs);
        continue;
      }
      if (lease.attempts > maxAttempts) {
        await finishPartition(pool, job.id, workerId, lease, 'failed', `partition was leased ${lease.attempts - 1} times without finishing`);
        logger.error({ event: 'fleet.partition.gave-up', fleetJobId: job.id, partition: lease.partition, attempts: lease.attempts - 1 }, 'partition failed too often; marked failed');
        continue;
      }

      const onAbort = () => lease.controller.abort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      current = lease;
      let summary: RotateSummary | null = null;
      let failure: unknown = null;
      try {
        summary = await rotate({
          databaseUrl: options.databaseUrl,
          matters: job.matters,
          target: job.target,
          kmsEndpoint: options.kmsEndpoint,
          kmsRegion: options.kmsRegion,
          mode: options.mode,
          quota: options.quota,
          workers,
          batchSize: options.batchSize,
          maxInFlight,
          startKey: lease.checkpoint === null ? lease.startKey : (BigInt(lease.checkpoint) + 1n).toString(),
          endKey: lease.endKey,
          scopeLock: false,
          limiter,
          workerPool,
          onProgress: (progress) => {
            lease.progress = progress;
          },
          logger: logger.child({ fleetJobId: job.id, partition: lease.partition }),
          signal: lease.controller.signal,
        });
      } catch (error) {
        failure = error;
      } finally {
        current = null;
        options.signal?.removeEventListener('abort', onAbort);
      }

      if (summary !== null) rewrapped += summary.rewrapped;
      if (lease.lost) continue;
      if (failure !== null || summary === null) {
        await releasePartition(pool, job.id, workerId, lease);
        logger.error({ event: 'fleet.partition.error', fleetJobId: job.id, partition: lease.partition, err: failure }, 'partition run failed; released for a retry');
        if (failure instanceof RotateUsageError) throw failure;
        await sleep(syncIntervalMs);
        continue;
      }
      if (summary.status === 'done' || summary.status === 'partial' || summary.status === 'failed') {
        await finishPartition(pool, job.id, workerId, lease, summary.status, summary.error ?? null);
        finishedPartitions += 1;
        logger.info(
          { event: 'fleet.partition.done', fleetJobId: job.id, partition: lease.partition, status: summary.status, rewrapped: summary.rewrapped },
          'partition finished',
        );
        continue;
      }
      // Interrupted: by a signal, or because the KMS stayed unavailable.
      await releasePartition(pool, job.id, workerId, lease);
      logger.warn({ event: 'fleet.partition.released', fleetJobId: job.id, partition: lease.partition, error: summary.error }, 'partition interrupted; released');
      if (aborted()) break;
      await sleep(syncIntervalMs);
    }

    const interrupted = aborted();
    const jobStatus = await finishJobIfComplete(pool, job.id);
    logger.info(
      { event: 'fleet.worker.stop', fleetJobId: job.id, workerId, jobStatus, partitions: finishedPartitions, rewrapped, interrupted, seconds: (Date.now() - started) / 1000 },
      'fleet worker stopped',
    );
    return { jobId: job.id, workerId, jobStatus, partitions: finishedPartitions, rewrapped, interrupted };
  } finally {
    if (timer !== null) clearInterval(timer);
    await pool
      .query('DELETE FROM rewrap.fleet_workers WHERE job_id = $1 AND worker_id = $2', [job.id, workerId])
      .catch((error: unknown) => logger.warn({ event: 'fleet.worker.deregister-failed', fleetJobId: job.id, workerId, err: error }, 'removing the worker record failed'));
    await limiter.stop();
    await workerPool.destroy().catch((error: unknown) => logger.warn({ event: 'pool.destroy.error', err: error }, 'worker pool did not stop cleanly'));
    await pool.end();
  }
}

function progressAssignments(parameter: string): string {
  return `checkpoint = COALESCE((${parameter}::jsonb ->> 'checkpoint')::bigint, checkpoint),
          scanned = (${parameter}::jsonb ->> 'scanned')::bigint, rewrapped = (${parameter}::jsonb ->> 'rewrapped')::bigint,
          conflicts = (${parameter}::jsonb ->> 'conflicts')::bigint, failed = (${parameter}::jsonb ->> 'failed')::bigint`;
}

/** The partition's counters: those of earlier leases plus this run's progress. */
function progressValues(lease: Lease): string {
  const progress = lease.progress;
  return JSON.stringify({
    checkpoint: progress?.checkpoint ?? null,
    scanned: lease.base.scanned + (progress?.scanned ?? 0),
    rewrapped: lease.base.rewrapped + (progress?.rewrapped ?? 0),
    conflicts: lease.base.conflicts + (progress?.conflicts ?? 0),
    failed: lease.base.failed + (progress?.failed ?? 0),
  });
}

async function leasePartition(pool: pg.Pool, jobId: string, workerId: string, leaseMs: number, logger: Logger): Promise<Lease | null> {
  const { rows } = await pool.query<{
    partition: number;
    start_key: string;
    end_key: string;
    checkpoint: string | null;
    attempts: number;
    scanned: string;
    rewrapped: string;
    conflicts: string;
    failed: string;
    previous_owner: string | null;
    previous_status: string;
  }>(
    `WITH candidate AS (
       SELECT partition, owner AS previous_owner, status AS previous_status
       FROM rewrap.fleet_partitions
       WHERE job_id = $1 AND (status = 'pending' OR (status = 'running' AND lease_expires_at < now()))
       ORDER BY status = 'running', partition
       LIMIT 1
       FOR UPDATE SKIP LOCKED)
     UPDATE rewrap.fleet_partitions p
     SET status = 'running', owner = $2, lease_expires_at = now() + $3 * interval '1 millisecond',
         attempts = p.attempts + 1, started_at = COALESCE(p.started_at, now())
     FROM candidate c
     WHERE p.job_id = $1 AND p.partition = c.partition
     RETURNING p.partition, p.start_key::text, p.end_key::text, p.checkpoint::text, p.attempts,
               p.scanned::text, p.rewrapped::text, p.conflicts::text, p.failed::text, c.previous_owner, c.previous_status`,
    [jobId, workerId, leaseMs],
  );
  const row = rows[0];
  if (row === undefined) return null;
  if (row.previous_status === 'running') {
    logger.warn(
      { event: 'fleet.partition.takeover', fleetJobId: jobId, partition: row.partition, previousOwner: row.previous_owner, workerId, checkpoint: row.checkpoint },
      'took over a partition whose lease expired',
    );
  } else {
    logger.info({ event: 'fleet.partition.lease', fleetJobId: jobId, partition: row.partition, workerId }, 'leased a partition');
  }
  return {
    partition: row.partition,
    startKey: row.start_key,
    endKey: row.end_key,
    checkpoint: row.checkpoint,
    attempts: row.attempts,
    base: { scanned: Number(row.scanned), rewrapped: Number(row.rewrapped), conflicts: Number(row.conflicts), failed: Number(row.failed) },
    controller: new AbortController(),
    progress: null,
    lost: false,
  };
}

async function finishPartition(pool: pg.Pool, jobId: string, workerId: string, lease: Lease, status: string, error: string | null): Promise<void> {
  await pool.query(
    `UPDATE rewrap.fleet_partitions SET status = $4, error = $5, finished_at = now(), lease_expires_at = NULL, ${progressAssignments('$6')}
     WHERE job_id = $1 AND partition = $2 AND owner = $3 AND status = 'running'`,
    [jobId, lease.partition, workerId, status, error, progressValues(lease)],
  );
}

async function releasePartition(pool: pg.Pool, jobId: string, workerId: string, lease: Lease): Promise<void> {
  await pool.query(
    `UPDATE rewrap.fleet_partitions SET status = 'pending', owner = NULL, lease_expires_at = NULL, ${progressAssignments('$4')}
     WHERE job_id = $1 AND partition = $2 AND owner = $3 AND status = 'running'`,
    [jobId, lease.partition, workerId, progressValues(lease)],
  );
}

/** Records the job's final status once no partition is pending or running; returns the job's status. */
async function finishJobIfComplete(pool: pg.Pool, jobId: string): Promise<string> {
  const { rows } = await pool.query<{ status: string }>(
    `UPDATE rewrap.fleet_jobs j
     SET status = CASE
           WHEN EXISTS (SELECT 1 FROM rewrap.fleet_partitions p WHERE p.job_id = j.id AND p.status = 'failed') THEN 'failed'
           WHEN EXISTS (SELECT 1 FROM rewrap.fleet_partitions p WHERE p.job_id = j.id AND p.status = 'partial') THEN 'partial'
           ELSE 'done' END,
         finished_at = now()
     WHERE j.id = $1 AND j.status = 'running'
       AND NOT EXISTS (SELECT 1 FROM rewrap.fleet_partitions p WHERE p.job_id = j.id AND p.status IN ('pending', 'running'))
     RETURNING status`,
    [jobId],
  );
  if (rows[0] !== undefined) return rows[0].status;
  const job = await pool.query<{ status: string }>('SELECT status FROM rewrap.fleet_jobs WHERE id = $1', [jobId]);
  return job.rows[0]?.status ?? 'unknown';
}
