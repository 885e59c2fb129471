import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { copyHeader, copyTrailer, encodeTuple } from '../db/copy-binary.js';
import type { QuotedVaultTable } from '../db/table.js';
import type { Logger } from '../log.js';

/** A row rewrapped by the KMS, waiting to be written back. */
export interface RewrappedRow {
  key: string;
  /** Matter of the row, recorded if the database rejects the write. */
  matter?: string | null;
  oldKek: string;
  newKek: string;
  oldBlob: Uint8Array;
  newBlob: Uint8Array;
}

/** A row that cannot be rewrapped; it goes to the quarantine with its reason. */
export interface QuarantinedRow {
  key: string;
  matter: string | null;
  sourceKek: string | null;
  errorCode: string;
  errorMessage: string;
}

export interface FlushInput {
  rewrapped: RewrappedRow[];
  quarantined: QuarantinedRow[];
  /** Rows read from the source since the previous flush, for the job's counters. */
  scanned: number;
  /** Key below which every row of the scope is settled, recorded so a rerun can start there. */
  checkpoint: string | null;
}

export interface FlushResult {
  updated: number;
  /** Keys of rows that changed underneath the job and were left as they are. */
  conflicts: string[];
  /** Rewrapped rows the database rejected (a constraint or trigger) and that were quarantined instead. */
  rejected: number;
}

export interface WriterOptions {
  pool: pg.Pool;
  table: QuotedVaultTable;
  tableName: string;
  jobId: string;
  targetKek: string;
  logger?: Logger | undefined;
  maxAttempts?: number;
  /** Testing only: when it returns true, the COPY's input fails halfway through. */
  injectCopyFault?: (() => boolean) | undefined;
}

const stagingTable = 'rewrap_staging';

/**
 * Tells whether a database error is about the rows' data (SQLSTATE class 22,
 * data exception, or 23, integrity constraint violation), which no retry of
 * the same rows can fix.
 */
function isRowDataError(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'));
}

function compareKeys(a: string, b: string): number {
  const x = BigInt(a);
  const y = BigInt(b);
  if (x < y) return -1;
  if (x > y) return 1;
  return 0;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Writes rewrapped rows back in bulk. Each flush is one transaction: a binary
 * COPY into a temporary staging table, one guarded `UPDATE … FROM staging`
 * bounded to the flush's key range, the quarantine inserts and the job's
 * counters. A row is changed only while it still holds the blob and KEK id
 * that were rewrapped, so a DEK that the application replaced meanwhile is
 * never overwritten; it is reported as a conflict instead.
 *
 * The key-range bound matters for speed: without it the planner may merge
 * join from the start of the primary key on every flush.
 */
export class Writer {
  #options: WriterOptions;
  #client: pg.PoolClient | null = null;
  #busyMs = 0;
  /** Error the current client reported between or during queries; the client is discarded before the next flush. */
  #clientError: Error | null = null;
  /** COPY stream in progress, destroyed if the client fails so that the flush cannot wait forever. */
  #activeSink: NodeJS.WritableStream & { destroy(error?: Error): void } | null = null;
  #updateSql: string;

  constructor(options: WriterOptions) {
    this.#options = options;
    const t = options.table;
    const rotatedAt = t.rotatedAt === null ? '' : `, ${t.rotatedAt} = now()`;
    this.#updateSql = `
      WITH updated AS (
        UPDATE ${t.table} v
        SET ${t.wrappedKey} = s.new_blob, ${t.kekId} = s.new_kek${rotatedAt}
        FROM ${stagingTable} s
        WHERE v.${t.key} = s.id
          AND v.${t.key} BETWEEN $1::bigint AND $2::bigint
          AND v.${t.kekId} = s.old_kek
          AND v.${t.wrappedKey} = s.old_blob
        RETURNING v.${t.key} AS id
      )
      SELECT s.id::text AS key FROM ${stagingTable} s
      WHERE NOT EXISTS (SELECT 1 FROM updated u WHERE u.id = s.id)`;
  }

  async #connect(): Promise<pg.PoolClient> {
    if (this.#client !== null && this.#clientError !== null) {
      this.#client.release(this.#clientError);
      this.#client = null;
    }
    if (this.#client !== null) return this.#client;
    this.#clientError = null;
    const client = await this.#options.pool.connect();
    // A checked-out client reports a lost backend only through this event.
    client.on('error', (error) => {
      this.#clientError = error;
      this.#activeSink?.destroy(error);
      this.#options.logger?.warn({ event: 'writer.connection.error', err: error, jobId: this.#options.jobId }, 'writer connection failed');
    });
    try {
      await client.query(`
        CREATE TEMP TABLE IF NOT EXISTS ${stagingTable} (
          id bigint NOT NULL,
          old_kek text NOT NULL,
          new_kek text NOT NULL,
          old_blob bytea NOT NULL,
          new_blob bytea NOT NULL
        ) ON COMMIT DELETE ROWS`);
    } catch (error) {
      client.release(error as Error);
      throw error;
    }
    this.#client = client;
    return client;
  }

  /**
   * Writes one flush, retrying on a new connection after a database error.
   * The guarded UPDATE makes a retry safe: a row written by an attempt whose
   * commit was lost is found on the new KEK and counted as a conflict, not
   * written twice.
   */
  async flush(input: FlushInput): Promise<FlushResult> {
    const started = performance.now();
    try {
      return await this.#flushWithRetries(input);
    } finally {
      this.#busyMs += performance.now() - started;
    }
  }

  /** Milliseconds spent in flushes so far, retries included. */
  get busyMs(): number {
    return this.#busyMs;
  }

  async #flushWithRetries(input: FlushInput): Promise<FlushResult> {
    const maxAttempts = this.#options.maxAttempts ?? 10;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#flushOnce(input);
      } catch (error) {
        if (isRowDataError(error)) {
          // Retrying the same rows fails the same way: find the rows at fault.
          this.#client?.release(error as Error);
          this.#client = null;
          return await this.#isolateRejectedRows(input, error as Error);
        }
        // Discard the client: after a failed COPY or a lost backend it is not safe to reuse.
        this.#client?.release(error as Error);
        this.#client = null;
        if (attempt >= maxAttempts) throw error;
        const delay = Math.min(5_000, 100 * 2 ** attempt);
        this.#options.logger?.warn(
          { event: 'writer.retry', err: error, attempt, jobId: this.#options.jobId, rows: input.rewrapped.length, delayMs: delay },
          'flush failed; retrying on a new connection',
        );
        await sleep(delay);
      }
    }
  }

  /**
   * Splits a flush that the database rejects for its data (a CHECK
   * constraint, a trigger, a value out of range) into halves until the
   * rejected rows stand alone, and quarantines those with their SQLSTATE.
   */
  async #isolateRejectedRows(input: FlushInput, error: Error): Promise<FlushResult> {
    const code = (error as { code?: string }).code ?? 'unknown';
    if (input.rewrapped.length <= 1) {
      const row = input.rewrapped[0];
      if (row === undefined) throw error;
      this.#options.logger?.warn(
        { event: 'writer.row-rejected', jobId: this.#options.jobId, rowKey: row.key, sqlstate: code },
        'database rejected a rewrapped row; quarantining it',
      );
      const quarantined: QuarantinedRow = {
        key: row.key,
        matter: row.matter ?? null,
        sourceKek: row.oldKek,
        errorCode: `DatabaseError:${code}`,
        errorMessage: `the database rejected the rewrapped row with SQLSTATE ${code}; check constraints and triggers on the vault table`,
      };
      const result = await this.#flushWithRetries({ ...input, rewrapped: [], quarantined: [...input.quarantined, quarantined] });
      return { ...result, rejected: result.rejected + 1 };
    }
    const middle = input.rewrapped.length >> 1;
    const first = await this.#flushWithRetries({ ...input, rewrapped: input.rewrapped.slice(0, middle) });
    const second = await this.#flushWithRetries({ rewrapped: input.rewrapped.slice(middle), quarantined: [], scanned: 0, checkpoint: input.checkpoint });
    return {
      updated: first.updated + second.updated,
      conflicts: [...first.conflicts, ...second.conflicts],
      rejected: first.rejected + second.rejected,
    };
  }

  async #flushOnce(input: FlushInput): Promise<FlushResult> {
    const client = await this.#connect();
    let updated = 0;
    let conflicts: string[] = [];
    await client.query('BEGIN');
    try {
      if (input.rewrapped.length > 0) {
        await this.#copyToStaging(client, input.rewrapped);
        let lo = input.rewrapped[0]!.key;
        let hi = lo;
        for (const row of input.rewrapped) {
          if (compareKeys(row.key, lo) < 0) lo = row.key;
          if (compareKeys(row.key, hi) > 0) hi = row.key;
        }
        const result = await client.query<{ key: string }>(this.#updateSql, [lo, hi]);
        conflicts = result.rows.map((row) => row.key);
        updated = input.rewrapped.length - conflicts.length;
      }
      if (input.quarantined.length > 0) await this.#quarantine(client, input.quarantined);
      await client.query(
        `UPDATE rewrap.jobs
         SET scanned = scanned + $2, rewrapped = rewrapped + $3, conflicts = conflicts + $4,
             failed = failed + $5, checkpoint = COALESCE($6, checkpoint), heartbeat_at = now()
         WHERE id = $1`,
        [this.#options.jobId, input.scanned, updated, conflicts.length, input.quarantined.length, input.checkpoint],
      );
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    }
    return { updated, conflicts, rejected: 0 };
  }

  async #copyToStaging(client: pg.PoolClient, rows: RewrappedRow[]): Promise<void> {
    const parts: Buffer[] = [copyHeader()];
    for (const row of rows) {
      parts.push(
        encodeTuple([
          { type: 'int8', value: row.key },
          { type: 'text', value: row.oldKek },
          { type: 'text', value: row.newKek },
          { type: 'bytea', value: row.oldBlob },
          { type: 'bytea', value: row.newBlob },
        ]),
      );
    }
    parts.push(copyTrailer());
    const body = Buffer.concat(parts);
    const sink = client.query(copyFrom(`COPY ${stagingTable} (id, old_kek, new_kek, old_blob, new_blob) FROM STDIN (FORMAT binary)`));
    this.#activeSink = sink;
    try {
      await this.#feedCopy(sink, body);
    } finally {
      this.#activeSink = null;
    }
  }

  async #feedCopy(sink: NodeJS.WritableStream, body: Buffer): Promise<void> {
    if (this.#options.injectCopyFault?.() === true) {
      const failing = new Readable({
        read() {
          this.push(body.subarray(0, body.length >> 1));
          this.destroy(new Error('injected COPY input failure'));
        },
      });
      await pipeline(failing, sink);
      return;
    }
    // The source is one in-memory buffer, so it cannot fail halfway and leave the COPY waiting.
    await pipeline(Readable.from([body]), sink);
  }

  async #quarantine(client: pg.PoolClient, rows: QuarantinedRow[]): Promise<void> {
    await client.query(
      `INSERT INTO rewrap.quarantine
         (job_id, table_name, row_key, matter_id, source_kek, target_kek, error_code, error_message)
       SELECT $1, $2, r.row_key, r.matter_id, r.source_kek, $3, r.error_code, r.error_message
       FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
         AS r(row_key, matter_id, source_kek, error_code, error_message)
       ON CONFLICT (table_name, row_key) WHERE resolved_at IS NULL
       DO UPDATE SET attempts = rewrap.quarantine.attempts + 1, last_seen = now(),
         job_id = EXCLUDED.job_id, error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message`,
      [
        this.#options.jobId,
        this.#options.tableName,
        this.#options.targetKek,
        rows.map((row) => row.key),
        rows.map((row) => row.matter),
        rows.map((row) => row.sourceKek),
        rows.map((row) => row.errorCode),
        rows.map((row) => row.errorMessage),
      ],
    );
  }

  /** Returns the connection to the pool. */
  close(): void {
    this.#client?.release();
    this.#client = null;
  }
}
