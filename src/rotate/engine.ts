import { hostname, availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { DescribeKeyCommand, type KMSClient } from '@aws-sdk/client-kms';
import pg from 'pg';
import { Piscina } from 'piscina';
import { classifyKmsError, createKmsClient } from '../kms/client.js';
import type { KmsTransportName } from '../kms/transport/types.js';
import { defaultVaultTable, quoteVaultTable, type QuotedVaultTable, type VaultTable } from '../db/table.js';
import type { Logger } from '../log.js';
import { QuotaLimiter, type RequestLimiter } from './limiter.js';
import { CheckpointTracker } from './progress.js';
import type { KmsMode, RewrapTask, RewrapTaskResult, WorkerConfig } from './protocol.js';
import { Semaphore } from './semaphore.js';
import { readScope, type SourceRow } from './source.js';
import { FlushQueue } from './flush-queue.js';
import { Writer } from './writer.js';
import { acquireScopeLock, ScopeBusyError, type ScopeLock } from './scope-lock.js';

/** Smallest quota the limiter keeps exactly: below it a single batch and one refill tick already exceed the quota. */
const minQuota = 5;

/** Limits set on every session of the job's pool, in milliseconds. */
const sessionTimeouts = { lockMs: 30_000, statementMs: 120_000, idleInTransactionMs: 120_000 };

/** AWS KMS rejects ciphertext blobs larger than this many bytes. */
export const maxBlobBytes = 6144;

export interface RotateOptions {
  databaseUrl: string;
  table?: VaultTable | undefined;
  /** Matter ids to rotate; null rotates every matter of the table. */
  matters: string[] | null;
  /** Target key: key id, ARN, alias name or alias ARN. */
  target: string;
  kmsEndpoint?: string | undefined;
  kmsRegion?: string | undefined;
  kmsRequestTimeoutMs?: number | undefined;
  mode?: KmsMode | undefined;
  /** KMS requests per second the job may send. Infinity disables the limiter. */
  quota: number;
  workers?: number | undefined;
  /** Rows per worker task, before the limiter caps it. */
  batchSize?: number | undefined;
  /** KMS requests the job keeps in flight; size it to quota × round-trip time. */
  maxInFlight?: number | undefined;
  pageSize?: number | undefined;
  flushRows?: number | undefined;
  flushIntervalMs?: number | undefined;
  /** Sweeps over the scope after the first pass, to pick up rows that changed underneath. */
  maxPasses?: number | undefined;
  /** Retries per row for throttling and transient errors before the job stops as interrupted. */
  maxRowAttempts?: number | undefined;
  progressIntervalMs?: number | undefined;
  /** First vault key to read (inclusive), as a decimal string; absent starts at the smallest key. */
  startKey?: string | undefined;
  /** Last vault key to read (inclusive), as a decimal string; absent reads to the largest key. */
  endKey?: string | undefined;
  /** False skips the scope's advisory lock, for callers that keep key ranges exclusive by other means, such as leases. */
  scopeLock?: boolean | undefined;
  /** Limiter to take KMS request tokens from instead of the job's own; the caller stops it. */
  limiter?: RequestLimiter | undefined;
  /** Worker pool to run rewrap tasks on instead of the job's own; the caller destroys it. */
  workerPool?: Piscina | undefined;
  /** Called after each committed flush with the checkpoint and the counters so far. */
  onProgress?: ((progress: RotateProgress) => void) | undefined;
  /** Retries the whole job may spend on throttled and transient failures before it stops as interrupted. */
  retryBudget?: number | undefined;
  /** Testing only: makes workers throw or exit at the given rates. */
  workerFaults?: WorkerConfig['faultInjection'];
  /** Testing only: every Nth COPY, starting with the first, has its input fail halfway. */
  copyFaultEvery?: number | undefined;
  /** KMS client implementation the workers use; unset means `defaultKmsTransport`. */
  kmsTransport?: KmsTransportName | undefined;
  logger: Logger;
  signal?: AbortSignal | undefined;
  /**
   * Called once the job is recorded and once it finished. A throw at start
   * stops the job before any row is read; a throw at finish is logged.
   */
  audit?: ((event: RotateAuditEvent) => Promise<void>) | undefined;
}

/** Event passed to `RotateOptions.audit`: the job's scope at start, its summary at finish. */
export type RotateAuditEvent =
  | { type: 'rotate.start'; jobId: string; table: string; matters: string[] | null; target: string }
  | { type: 'rotate.finish'; jobId: string; table: string; matters: string[] | null; summary: RotateSummary };

/** What `RotateOptions.onProgress` receives. */
export interface RotateProgress {
  jobId: string;
  /** Last key of the settled prefix of the scope, or null when nothing is settled yet. */
  checkpoint: string | null;
  scanned: number;
  rewrapped: number;
  conflicts: number;
  /** Rows quarantined by committed flushes of this run. */
  failed: number;
}

export type JobStatus = 'done' | 'partial' | 'failed' | 'interrupted';

export interface RotateSummary {
  jobId: string;
  status: JobStatus;
  target: string;
  scanned: number;
  rewrapped: number;
  conflicts: number;
  /** Rows that failed in this run and were quarantined. */
  failed: number;
  /** Rows of the scope that are in the quarantine now, from this run or earlier ones. */
  quarantined: number;
  throttled: number;
  retries: number;
  kmsRequests: number;
  seconds: number;
  /** Rewrapped rows per second. */
  rate: number;
  /**
   * Seconds spent per stage. `read` is the wait for source rows and `write`
   * the flushes, each one at a time. `limiterWait` and `kms` add up the time
   * of every batch in flight, so they can exceed the wall time.
   */
  stages: { readSeconds: number; limiterWaitSeconds: number; kmsSeconds: number; writeSeconds: number };
  error?: string;
}

export { ScopeBusyError };

/** An error in the job's input: bad target key, bad options. The CLI maps it to exit status 2. */
export class RotateUsageError extends Error {
  override name = 'RotateUsageError';
}

interface PendingRow {
  row: SourceRow;
  chunk: number;
  attempts: number;
}

function workerFile(): { filename: string; execArgv: string[] } {
  const here = import.meta.url;
  // Under a TypeScript loader (tests, tsx) the worker is the .ts source and
  // needs the same loader; a built install runs the compiled .js file.
  if (here.endsWith('.ts')) {
    return { filename: fileURLToPath(new URL('./worker.ts', here)), execArgv: ['--import', 'tsx'] };
  }
  return { filename: fileURLToPath(new URL('./worker.js', here)), execArgv: [] };
}

function scopeKeyOf(tableName: string, matters: string[] | null, startKey?: string, endKey?: string): string {
  const scope = matters === null ? `${tableName}:*` : `${tableName}:${[...matters].sort().join(',')}`;
  // A key range is a scope of its own, so that resuming picks up the checkpoint of the same range only.
  return startKey === undefined && endKey === undefined ? scope : `${scope}@${startKey ?? ''}..${endKey ?? ''}`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Exponential backoff with full jitter, capped at 10 seconds. */
function backoffMs(attempt: number): number {
  return Math.random() * Math.min(10_000, 100 * 2 ** attempt);
}

/** Checks that the vault table and its mapped columns exist, so that a wrong mapping fails before any work. */
async function checkVaultTable(pool: pg.Pool, t: QuotedVaultTable, name: string): Promise<void> {
  const rotatedAt = t.rotatedAt === null ? '' : `, ${t.rotatedAt}`;
  try {
    await pool.query(`SELECT ${t.key}, ${t.matter}, ${t.token}, ${t.wrappedKey}, ${t.kekId}${rotatedAt} FROM ${t.table} LIMIT 0`);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === '42P01' || code === '42703' || code === '3F000') {
      throw new RotateUsageError(`vault table ${name} does not match its mapping: ${(error as Error).message}; check the table name and column names`);
    }
    throw error;
  }
}

async function resolveTargetKey(kms: KMSClient, target: string): Promise<string> {
  let metadata;
  try {
    metadata = (await kms.send(new DescribeKeyCommand({ KeyId: target }))).KeyMetadata;
  } catch (error) {
    const name = (error as Error).name;
    if (name === 'NotFoundException') {
      throw new RotateUsageError(`target key "${target}" was not found in the KMS; pass a key id, key ARN or alias that exists`);
    }
    throw error;
  }
  if (metadata?.Arn === undefined) throw new RotateUsageError(`DescribeKey returned no ARN for target key "${target}"`);
  if (metadata.KeyState !== 'Enabled') {
    throw new RotateUsageError(
      `target key ${metadata.Arn} is ${metadata.KeyState ?? 'in an unknown state'}; enable it or choose another target`,
    );
  }
  if (metadata.KeyUsage !== undefined && metadata.KeyUsage !== 'ENCRYPT_DECRYPT') {
    throw new RotateUsageError(`target key ${metadata.Arn} has key usage ${metadata.KeyUsage}; rewrapping needs ENCRYPT_DECRYPT`);
  }
  return metadata.Arn;
}

/**
 * Rotates the wrapped DEKs of a scope to the target KEK: reads the rows not
 * yet on it, rewraps them through the KMS under the quota, and writes them
 * back. Returns the summary; throws `ScopeBusyError` when another job holds
 * the scope and `RotateUsageError` for bad input.
 */
export async function rotate(options: RotateOptions): Promise<RotateSummary> {
  const started = process.hrtime.bigint();
  const logger = options.logger;
  const table = options.table ?? defaultVaultTable;
  const quoted = quoteVaultTable(table);
  const mode = options.mode ?? 'reencrypt';
  const requestsPerRow = mode === 'decrypt-encrypt' ? 2 : 1;
  const workers = Math.max(1, options.workers ?? defaultWorkers(options.quota));
  const scopeKey = scopeKeyOf(table.name, options.matters, options.startKey, options.endKey);

  if (Number.isFinite(options.quota) && !(options.quota >= minQuota)) {
    throw new RotateUsageError(`invalid KMS quota ${options.quota}: the limiter needs at least ${minQuota} requests per second`);
  }
  if (options.matters !== null && options.matters.length === 0) {
    throw new RotateUsageError('no matter given: pass --matter ID (repeatable) or --all');
  }

  const kms = createKmsClient({ endpoint: options.kmsEndpoint, region: options.kmsRegion, maxSockets: 8 });
  const pool = new pg.Pool({
    connectionString: options.databaseUrl,
    max: 4,
    application_name: 'rewrap',
    keepAlive: true,
    connectionTimeoutMillis: 15_000,
    // A row lock held by an idle application transaction, or a stalled
    // server, fails the statement instead of holding the job forever; the
    // reader and the writer retry it on a new connection.
    options: `-c lock_timeout=${sessionTimeouts.lockMs} -c statement_timeout=${sessionTimeouts.statementMs} -c idle_in_transaction_session_timeout=${sessionTimeouts.idleInTransactionMs}`,
  });
  pool.on('error', (error) => logger.warn({ event: 'db.pool.error', err: error }, 'idle database connection failed'));

  let lock: ScopeLock | null = null;
  let limiter: RequestLimiter | null = null;
  let piscina: Piscina | null = null;
  let writer: Writer | null = null;
  let jobId = '';

  const counters = { scanned: 0, rewrapped: 0, conflicts: 0, failed: 0, throttled: 0, retries: 0, kmsRequests: 0 };
  const stageMs = { read: 0, limiterWait: 0, kms: 0 };
  let stopReason: string | null = null;
  let fatal: Error | null = null;

  try {
    await checkVaultTable(pool, quoted, table.name);
    const target = await resolveTargetKey(kms, options.target);
    if (options.scopeLock !== false) lock = await acquireScopeLock(options.databaseUrl, table.name, options.matters);

    // Resume after an interrupted or crashed job of the same scope and target.
    const previous = await pool.query<{ id: string; checkpoint: string | null; status: string }>(
      `SELECT id::text, checkpoint, status FROM rewrap.jobs
       WHERE scope_key = $1 AND kind = 'rotate' ORDER BY jobs.id DESC LIMIT 1`,
      [scopeKey],
    );
    const last = previous.rows[0];
    let resumeKey: string | null = null;
    if (last !== undefined && last.status !== 'done' && last.status !== 'partial') {
      const jobTarget = await pool.query<{ target_kek: string }>('SELECT target_kek FROM rewrap.jobs WHERE id = $1', [last.id]);
      if (jobTarget.rows[0]?.target_kek === target && last.checkpoint !== null) {
        resumeKey = (BigInt(last.checkpoint) + 1n).toString();
      }
      await pool.query(`UPDATE rewrap.jobs SET status = 'interrupted', finished_at = COALESCE(finished_at, now()) WHERE id = $1 AND status = 'running'`, [last.id]);
    }

    const inserted = await pool.query<{ id: string }>(
      `INSERT INTO rewrap.jobs (kind, table_name, scope, scope_key, target_kek, status, host, pid, checkpoint)
       VALUES ('rotate', $1, $2, $3, $4, 'running', $5, $6, $7) RETURNING id::text`,
      [table.name, JSON.stringify({ matters: options.matters }), scopeKey, target, hostname(), process.pid, resumeKey === null ? null : last?.checkpoint ?? null],
    );
    jobId = inserted.rows[0]!.id;
    try {
      await options.audit?.({ type: 'rotate.start', jobId, table: table.name, matters: options.matters, target });
    } catch (error) {
      await pool.query(`UPDATE rewrap.jobs SET status = 'failed', finished_at = now(), error = $2 WHERE id = $1`, [jobId, 'audit record of the start failed']);
      throw error;
    }

    const batchSize = options.batchSize ?? 50;
    // The limiter counts KMS requests; a row costs two of them in decrypt-encrypt mode.
    limiter = options.limiter ?? new QuotaLimiter({ quota: options.quota, maxBatch: batchSize * requestsPerRow, logger });
    const rowsPerBatch = (l: { batchSize(): number }) => Math.max(1, Math.floor(l.batchSize() / requestsPerRow));
    // Enough requests in flight to carry the quota over a 50 ms round trip. Each
    // one holds a socket and its request state in a worker, about 45 KB with
    // signed-undici and more with the SDK, so the cap bounds memory: at 4,096 a
    // 2-worker job peaked at 480-730 MB of RSS (BENCHMARKS.md).
    const maxInFlight =
      options.maxInFlight ?? Math.min(1024, Math.max(64, Math.ceil((Number.isFinite(options.quota) ? options.quota : 10_000) * 0.05)));
    const batchesInFlight = Math.max(workers, Math.ceil(maxInFlight / limiter.batchSize()));
    const tasksPerWorker = Math.ceil(batchesInFlight / workers);
    const workerConfig: WorkerConfig = {
      endpoint: options.kmsEndpoint,
      region: options.kmsRegion,
      maxSockets: tasksPerWorker * limiter.batchSize(),
      requestTimeoutMs: options.kmsRequestTimeoutMs ?? 15_000,
      mode,
      faultInjection: options.workerFaults,
      transport: options.kmsTransport,
    };
    const { filename, execArgv } = workerFile();
    piscina = options.workerPool ?? new Piscina({
      filename,
      execArgv,
      workerData: workerConfig,
      // The main thread already printed the SDK's Node version warning; one per worker adds nothing.
      env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
      minThreads: workers,
      maxThreads: workers,
      concurrentTasksPerWorker: tasksPerWorker,
      idleTimeout: 60_000,
    });
    if (options.workerPool === undefined) piscina.on('error', (error) => logger.error({ event: 'pool.error', jobId, err: error }, 'worker pool error'));

    const copyFaultEvery = options.copyFaultEvery ?? 0;
    let copies = 0;
    writer = new Writer({
      pool,
      table: quoted,
      tableName: table.name,
      jobId,
      targetKek: target,
      logger,
      injectCopyFault: copyFaultEvery > 0 ? () => copies++ % copyFaultEvery === 0 : undefined,
    });
    // Tokens granted while a worker thread is still loading would wait in the
    // pool's queue and reach the KMS together once it is up, over the quota.
    await warmUpWorkers(piscina, workers);

    const tracker = new CheckpointTracker();
    let scannedSinceFlush = 0;
    const flushQueue = new FlushQueue({
      writer,
      flushRows: options.flushRows ?? 5_000,
      flushIntervalMs: options.flushIntervalMs ?? 500,
      takeScanned: () => {
        const value = scannedSinceFlush;
        scannedSinceFlush = 0;
        return value;
      },
      checkpoint: () => tracker.checkpoint,
      onFlushed: (result, settledChunks) => {
        counters.rewrapped += result.updated;
        counters.conflicts += result.conflicts.length;
        for (const [chunk, count] of settledChunks) tracker.settle(chunk, count);
        options.onProgress?.({
          jobId,
          checkpoint: tracker.checkpoint,
          scanned: counters.scanned,
          rewrapped: counters.rewrapped,
          conflicts: counters.conflicts,
          failed: flushQueue.quarantinedCount,
        });
      },
    });

    logger.info(
      {
        event: 'kek.rotate.start',
        jobId,
        table: table.name,
        matters: options.matters ?? 'all',
        target,
        mode,
        quota: options.quota,
        workers,
        batchSize: rowsPerBatch(limiter),
        maxInFlight: batchesInFlight * limiter.batchSize(),
        resumeFrom: resumeKey,
      },
      'rotation started',
    );

    const stop = (reason: string, error?: Error) => {
      if (stopReason !== null) return;
      stopReason = reason;
      if (error !== undefined) fatal = error;
    };
    const onAbort = () => stop('signal');
    options.signal?.addEventListener('abort', onAbort, { once: true });
    // A signal that arrived during startup fired before the listener existed.
    if (options.signal?.aborted === true) stop('signal');

    const sourceKeyStates = new Map<string, { usable: boolean; definite: boolean; state: string; at: number }>();
    const sourceKeyState = async (kek: string) => {
      const cached = sourceKeyStates.get(kek);
      if (cached !== undefined && Date.now() - cached.at < 10_000) return cached;
      let state: string;
      try {
        state = (await kms.send(new DescribeKeyCommand({ KeyId: kek }))).KeyMetadata?.KeyState ?? 'Unknown';
      } catch (error) {
        state = (error as Error).name === 'NotFoundException' ? 'NotFound' : 'Unknown';
      }
      // Only a definite state shows that the source key is the cause. An unknown one stops the job instead.
      const definite = state === 'Disabled' || state === 'PendingDeletion' || state === 'NotFound' || state === 'Enabled';
      const entry = { usable: state === 'Enabled', definite, state, at: Date.now() };
      sourceKeyStates.set(kek, entry);
      return entry;
    };

    const maxRowAttempts = options.maxRowAttempts ?? 8;
    const retryBudget = options.retryBudget ?? 100_000;
    const activePiscina = piscina;
    const activeLimiter = limiter;

    /** Sends one batch through the limiter and the pool, and retries its transient failures. */
    const runBatch = async (batch: PendingRow[]): Promise<void> => {
      let pending = batch;
      while (pending.length > 0 && stopReason === null) {
        const waitStarted = performance.now();
        await activeLimiter.acquire(pending.length * requestsPerRow);
        stageMs.limiterWait += performance.now() - waitStarted;
        if (stopReason !== null) return;
        const task: RewrapTask = {
          target,
          rows: pending.map(({ row }) => ({ blob: row.blob!, sourceKek: row.kek, matter: row.matter, token: row.token })),
        };
        let result: RewrapTaskResult;
        try {
          const sent = performance.now();
          result = (await activePiscina.run(task)) as RewrapTaskResult;
          stageMs.kms += performance.now() - sent;
        } catch (error) {
          // The worker threw or died; the pool replaces it and the batch is sent again.
          logger.warn({ event: 'pool.task.failed', jobId, err: error, rows: pending.length }, 'worker task failed; requeueing its batch');
          result = {
            blobs: pending.map(() => null),
            errors: pending.map(() => 'WorkerError'),
            statuses: pending.map(() => null),
            keyId: null,
            requests: 0,
            threadId: -1,
          };
        }
        counters.kmsRequests += result.requests;

        const retry: PendingRow[] = [];
        let throttledHere = 0;
        for (let i = 0; i < pending.length; i++) {
          const item = pending[i]!;
          const blob = result.blobs[i];
          const errorName = result.errors[i] ?? null;
          if (blob !== null && blob !== undefined && errorName === null) {
            await flushQueue.addRewrapped(
              { key: item.row.key, matter: item.row.matter, oldKek: item.row.kek, newKek: result.keyId ?? target, oldBlob: item.row.blob!, newBlob: blob },
              item.chunk,
            );
            continue;
          }
          const name = errorName ?? 'UnknownError';
          const kind = classifyKmsError(name, result.statuses[i] ?? undefined);
          if (kind === 'throttled') {
            throttledHere += 1;
            retry.push(item);
          } else if (kind === 'transient') {
            retry.push(item);
          } else if (kind === 'permanent') {
            await flushQueue.addQuarantined(quarantineRecord(item.row, name), item.chunk);
          } else if (kind === 'key-state') {
            const source = await sourceKeyState(item.row.kek);
            if (!source.definite) {
              stop('kms unavailable', new Error(`KMS returned ${name} and the state of source key ${item.row.kek} could not be read; rerun the same command to resume`));
            } else if (!source.usable) {
              await flushQueue.addQuarantined(quarantineRecord(item.row, name, `source key is ${source.state}`), item.chunk);
            } else {
              stop('target key unusable', new Error(`KMS returned ${name} although source key ${item.row.kek} is enabled; check that target key ${target} is enabled and usable`));
            }
          } else {
            stop('kms access', new Error(`KMS rejected the request with ${name}; check the credentials and the kms:ReEncryptFrom and kms:ReEncryptTo permissions`));
          }
        }
        if (throttledHere > 0) {
          counters.throttled += throttledHere;
          activeLimiter.recordThrottled(throttledHere);
        }
        if (retry.length === 0) return;
        for (const item of retry) item.attempts += 1;
        counters.retries += retry.length;
        const worst = Math.max(...retry.map((item) => item.attempts));
        if (counters.retries > retryBudget) {
          logger.error(
            { event: 'kek.rotate.retry-budget', jobId, retries: counters.retries, retryBudget },
            'retry budget spent; stopping the job so it can be resumed',
          );
          stop('kms unavailable', new Error(`the job spent its retry budget of ${retryBudget}; rerun the same command to resume, or raise the budget`));
          return;
        }
        if (worst > maxRowAttempts) {
          logger.error(
            { event: 'kek.rotate.kms-unavailable', jobId, rows: retry.length, attempts: worst, error: result.errors.find((e) => e !== null) },
            'KMS kept failing; stopping the job so it can be resumed',
          );
          stop('kms unavailable', new Error(`KMS requests kept failing after ${maxRowAttempts} attempts; rerun the same command to resume`));
          return;
        }
        const delay = backoffMs(worst);
        logger.debug({ event: 'kek.rotate.retry', jobId, rows: retry.length, attempt: worst, delayMs: Math.round(delay) }, 'retrying rows');
        await sleep(delay);
        pending = retry;
      }
    };

    const progressTimer = setInterval(() => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      logger.info(
        {
          event: 'kek.rotate.progress',
          jobId,
          scanned: counters.scanned,
          rewrapped: counters.rewrapped,
          conflicts: counters.conflicts,
          failed: counters.failed,
          throttled: counters.throttled,
          rate: Math.round(counters.rewrapped / seconds),
          rateFactor: activeLimiter.rateFactor,
        },
        'rotation progress',
      );
    }, options.progressIntervalMs ?? 5_000);
    progressTimer.unref();

    const running = new Set<Promise<void>>();
    // Set once a pass over the whole scope found nothing left to rewrap.
    let sweptClean = false;
    try {
      const semaphore = new Semaphore(batchesInFlight);
      const maxPasses = options.maxPasses ?? 4;
      for (let pass = 1; pass <= maxPasses && stopReason === null; pass++) {
        let passScanned = 0;
        const source = readScope({
          pool,
          table: quoted,
          tableName: table.name,
          matters: options.matters,
          target,
          pageSize: options.pageSize ?? defaultPageSize(options.quota),
          fetchSize: 1_000,
          chunkSize: 500,
          startKey: pass === 1 ? (resumeKey ?? options.startKey ?? null) : (options.startKey ?? null),
          endKey: options.endKey ?? null,
          logger,
          signal: options.signal,
        });
        let readStarted = performance.now();
        for await (const rows of source) {
          stageMs.read += performance.now() - readStarted;
          passScanned += rows.length;
          counters.scanned += rows.length;
          scannedSinceFlush += rows.length;
          const chunk = tracker.open(rows[rows.length - 1]!.key, rows.length);
          const valid: PendingRow[] = [];
          for (const row of rows) {
            const problem = rowProblem(row);
            if (problem !== null) await flushQueue.addQuarantined(quarantineRecord(row, problem.code, problem.message), chunk);
            else valid.push({ row, chunk, attempts: 0 });
          }
          let offset = 0;
          while (offset < valid.length && stopReason === null) {
            const size = rowsPerBatch(activeLimiter);
            const batch = valid.slice(offset, offset + size);
            offset += size;
            await semaphore.acquire();
            const task = runBatch(batch)
              .catch((error: unknown) => stop('internal error', error as Error))
              .finally(() => {
                semaphore.release();
                running.delete(task);
              });
            running.add(task);
          }
          if (stopReason !== null) break;
          readStarted = performance.now();
        }
        await Promise.all(running);
        await flushQueue.drain();
        logger.info({ event: 'kek.rotate.pass', jobId, pass, scanned: passScanned }, 'pass finished');
        // A pass that started after a checkpoint covered only part of the
        // scope, so only an empty pass over the whole scope ends the sweep.
        if (passScanned === 0 && (pass > 1 || resumeKey === null)) {
          sweptClean = true;
          break;
        }
      }
    } catch (error) {
      stop('error', error as Error);
    } finally {
      // Batches still running after an error finish before anything is torn down.
      await Promise.allSettled(running);
      clearInterval(progressTimer);
      options.signal?.removeEventListener('abort', onAbort);
    }

    // Whatever stopped the job, write what was already rewrapped.
    try {
      await flushQueue.drain();
    } catch (error) {
      stop('write-back failed', error as Error);
      fatal ??= error as Error;
    }
    counters.failed = flushQueue.quarantinedCount;

    // The quarantine count covers this job's scope: its matters and, for a fleet partition, its key range.
    const openParams: unknown[] = [table.name, options.matters, options.startKey ?? null, options.endKey ?? null];
    const open = await pool.query<{ count: string }>(
      `SELECT count(*)::text AS count FROM rewrap.quarantine
       WHERE table_name = $1 AND resolved_at IS NULL
         AND ($2::text[] IS NULL OR matter_id = ANY($2::text[]))
         AND ($3::bigint IS NULL OR row_key::bigint >= $3::bigint)
         AND ($4::bigint IS NULL OR row_key::bigint <= $4::bigint)`,
      openParams,
    );
    const quarantined = Number(open.rows[0]?.count ?? 0);

    if (stopReason === null && !sweptClean) {
      // Every pass still found rows: something keeps writing DEKs under an old KEK.
      stop(
        'rows keep appearing',
        new Error(`rows kept appearing on other KEKs during ${options.maxPasses ?? 4} passes; check that the application wraps new DEKs under ${target}, then rerun`),
      );
    }

    let status: JobStatus;
    if (fatal !== null) status = stopReason === 'kms unavailable' || stopReason === 'rows keep appearing' ? 'interrupted' : 'failed';
    else if (stopReason === 'signal') status = 'interrupted';
    else if (quarantined > 0) status = 'partial';
    else status = 'done';

    const fatalMessage = fatal === null ? null : (fatal as Error).message;
    await pool.query(`UPDATE rewrap.jobs SET status = $2, finished_at = now(), error = $3, checkpoint = COALESCE($4, checkpoint) WHERE id = $1`, [
      jobId,
      status,
      fatalMessage,
      tracker.checkpoint,
    ]);

    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const summary: RotateSummary = {
      jobId,
      status,
      target,
      scanned: counters.scanned,
      rewrapped: counters.rewrapped,
      conflicts: counters.conflicts,
      failed: counters.failed,
      quarantined,
      throttled: counters.throttled,
      retries: counters.retries,
      kmsRequests: counters.kmsRequests,
      seconds: Math.round(seconds * 1000) / 1000,
      rate: seconds > 0 ? Math.round(counters.rewrapped / seconds) : 0,
      stages: {
        readSeconds: Math.round(stageMs.read) / 1000,
        limiterWaitSeconds: Math.round(stageMs.limiterWait) / 1000,
        kmsSeconds: Math.round(stageMs.kms) / 1000,
        writeSeconds: Math.round(writer.busyMs) / 1000,
      },
    };
    if (fatalMessage !== null) summary.error = fatalMessage;
    await options.audit?.({ type: 'rotate.finish', jobId, table: table.name, matters: options.matters, summary }).catch((error: unknown) => {
      logger.error({ event: 'kek.rotate.audit.error', jobId, err: error }, 'writing the rotation finish audit record failed');
    });
    const doneFields = { event: 'kek.rotate.done', ...summary, matters: options.matters ?? 'all' };
    if (status === 'failed') logger.error({ ...doneFields, err: fatal }, 'rotation failed');
    else logger.info(doneFields, 'rotation finished');
    return summary;
  } finally {
    if (options.workerPool === undefined) await piscina?.destroy().catch((error: unknown) => logger.warn({ event: 'pool.destroy.error', err: error }, 'worker pool did not stop cleanly'));
    if (options.limiter === undefined) await limiter?.stop();
    writer?.close();
    await lock?.release().catch((error: unknown) => logger.warn({ event: 'lock.release.error', err: error }, 'scope lock release failed'));
    await pool.end();
    kms.destroy();
  }
}

/**
 * Runs empty tasks until every worker thread has run one, so that the
 * pool starts real batches as soon as they are granted. Gives up after 60 s
 * and lets the job go on, slower to start.
 */
async function warmUpWorkers(pool: Piscina, workers: number): Promise<void> {
  const seen = new Set<number>();
  const deadline = Date.now() + 60_000;
  while (seen.size < workers && Date.now() < deadline) {
    const results = await Promise.allSettled(
      Array.from({ length: workers * 2 }, () => pool.run({ target: '', rows: [] } satisfies RewrapTask) as Promise<RewrapTaskResult>),
    );
    for (const result of results) {
      if (result.status === 'fulfilled') seen.add(result.value.threadId);
    }
  }
}

/**
 * Worker threads for a quota: one per 3,000 requests per second, at most one
 * per core. One worker thread, which does most of a rewrap's CPU work, fell
 * short of a 5,000/s quota here (BENCHMARKS.md), and each thread that is not
 * needed costs tens of megabytes of heap.
 */
function defaultWorkers(quota: number): number {
  const cores = availableParallelism();
  if (!Number.isFinite(quota)) return cores;
  return Math.max(1, Math.min(cores, Math.ceil(quota / 3_000)));
}

/**
 * Rows per keyset page: about two seconds of work at the quota, so that the
 * page's statement, and its snapshot, stays short even when the rate is low.
 */
function defaultPageSize(quota: number): number {
  if (!Number.isFinite(quota)) return 10_000;
  return Math.max(1_000, Math.min(20_000, Math.round(quota * 2)));
}

/**
 * Returns why a row cannot be rewrapped, or null when it can. A mapped table
 * may allow NULL in the KEK, matter or token column; such a row has no
 * context to unwrap under and could never match the writer's guard.
 */
export function rowProblem(row: SourceRow): { code: 'InvalidRow' | 'InvalidBlob'; message: string } | null {
  if (row.kek === null) return { code: 'InvalidRow', message: 'KEK id is NULL' };
  if (row.matter === null) return { code: 'InvalidRow', message: 'matter id is NULL' };
  if (row.token === null) return { code: 'InvalidRow', message: 'token is NULL' };
  const blob = blobProblem(row.blob);
  return blob === null ? null : { code: 'InvalidBlob', message: blob };
}

/** Returns why a blob cannot be sent to the KMS, or null when it can. */
export function blobProblem(blob: Buffer | null): string | null {
  if (blob === null) return 'wrapped key is NULL';
  if (blob.length === 0) return 'wrapped key is empty';
  if (blob.length > maxBlobBytes) return `wrapped key is ${blob.length} bytes, over the KMS limit of ${maxBlobBytes}`;
  return null;
}

function quarantineRecord(row: SourceRow, code: string, detail?: string) {
  return {
    key: row.key,
    matter: row.matter,
    sourceKek: row.kek,
    errorCode: code,
    errorMessage: detail ?? `KMS rejected the rewrap with ${code}`,
  };
}
