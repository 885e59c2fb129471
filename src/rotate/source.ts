import type pg from 'pg';
import QueryStream from 'pg-query-stream';
import type { Logger } from '../log.js';
import { type QuotedVaultTable } from '../db/table.js';

/** One vault row as read for rewrapping. `key` is the bigint key as a decimal string, exact past 2^53. */
export interface SourceRow {
  key: string;
  /** NULL only in a mapped table that allows it; such rows are quarantined. */
  matter: string;
  token: string;
  blob: Buffer | null;
  kek: string;
}

export interface SourceOptions {
  pool: pg.Pool;
  table: QuotedVaultTable;
  /** Unquoted table name, as recorded in the quarantine. */
  tableName: string;
  /** Matter ids to read; null reads every matter. */
  matters: string[] | null;
  /** Target key ARN: rows already wrapped under it are skipped. */
  target: string;
  /** Rows per keyset page; each page is one short statement. */
  pageSize: number;
  /** Rows fetched per cursor round trip inside a page. */
  fetchSize: number;
  /** Rows per yielded chunk. */
  chunkSize: number;
  /** First key to read (inclusive), as a decimal string; null starts at the smallest key. */
  startKey: string | null;
  /** Last key to read (inclusive), as a decimal string; null or absent reads to the largest key. */
  endKey?: string | null | undefined;
  /** Attempts per page before a database error is raised to the caller. */
  maxPageAttempts?: number;
  logger?: Logger | undefined;
  signal?: AbortSignal | undefined;
}

const minBigint = '-9223372036854775808';
const maxBigint = 9223372036854775807n;

function buildPageQuery(options: SourceOptions): string {
  const t = options.table;
  const matterFilter = options.matters === null ? '' : `AND v.${t.matter} = ANY($5::text[])`;
  const endFilter = options.endKey === null || options.endKey === undefined ? '' : `AND v.${t.key} <= ${BigInt(options.endKey).toString()}::bigint`;
  return `
    SELECT v.${t.key}::text AS key, v.${t.matter} AS matter, v.${t.token} AS token,
           v.${t.wrappedKey} AS blob, v.${t.kekId} AS kek
    FROM ${t.table} v
    WHERE v.${t.key} >= $1::bigint
      ${endFilter}
      AND v.${t.kekId} IS DISTINCT FROM $2
      ${matterFilter}
      AND NOT EXISTS (
        SELECT 1 FROM rewrap.quarantine q
        WHERE q.table_name = $3 AND q.row_key = v.${t.key}::text AND q.resolved_at IS NULL)
    ORDER BY v.${t.key}
    LIMIT $4`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Reads the rows of the scope that are not yet on the target key, in key
 * order, as chunks of at most `chunkSize` rows.
 *
 * Each page is a fresh statement on a pooled client, so no transaction or
 * snapshot stays open longer than one page. A page that fails (backend
 * terminated, connection lost) is reopened after the last row already
 * yielded, on a new client; the failed client is discarded, never reused.
 */
export async function* readScope(options: SourceOptions): AsyncGenerator<SourceRow[]> {
  const sql = buildPageQuery(options);
  const maxAttempts = options.maxPageAttempts ?? 10;
  let nextKey = options.startKey ?? minBigint;
  let attempt = 0;

  for (;;) {
    if (options.signal?.aborted === true) return;
    const params: unknown[] = [nextKey, options.target, options.tableName, options.pageSize];
    if (options.matters !== null) params.push(options.matters);

    let client: pg.PoolClient | undefined;
    let pageRows = 0;
    let failure: Error | undefined;
    let completed = false;
    let chunk: SourceRow[] = [];
    try {
      client = await options.pool.connect();
      const stream = new QueryStream(sql, params, { batchSize: options.fetchSize });
      // A stream destroyed on a dead connection waits forever for its cursor
      // to close, so its error never arrives. A failure of the client itself
      // therefore ends the read directly, racing every step of the stream.
      let rejectOnClientFailure!: (error: Error) => void;
      const clientFailed = new Promise<never>((_, reject) => {
        rejectOnClientFailure = reject;
      });
      clientFailed.catch(() => undefined);
      const onError = (error: Error) => rejectOnClientFailure(error);
      const onEnd = () => rejectOnClientFailure(new Error('database connection ended during a page read'));
      client.on('error', onError);
      client.on('end', onEnd);
      const rows = stream[Symbol.asyncIterator]() as AsyncIterator<SourceRow>;
      try {
        client.query(stream);
        for (;;) {
          const next = await Promise.race([rows.next(), clientFailed]);
          if (next.done === true) break;
          chunk.push(next.value);
          pageRows += 1;
          if (chunk.length >= options.chunkSize) {
            const ready = chunk;
            chunk = [];
            nextKey = (BigInt(ready[ready.length - 1]!.key) + 1n).toString();
            yield ready;
            attempt = 0;
            if (BigInt(nextKey) > maxBigint) break;
          }
        }
        completed = true;
      } finally {
        client.off('error', onError);
        client.off('end', onEnd);
        // Not awaited, because on a dead connection the cursor's close never completes.
        if (!stream.destroyed) stream.destroy();
      }
    } catch (error) {
      failure = error as Error;
    } finally {
      // A client whose page did not complete is destroyed, never returned to the pool.
      client?.release(failure ?? (completed ? false : new Error('page read stopped early')));
    }

    if (failure !== undefined) {
      // Rows read but not yet yielded are simply read again.
      attempt += 1;
      if (attempt >= maxAttempts) throw failure;
      // Up to about 30 seconds in all, long enough for a server restart or a failover.
      const delay = Math.min(5_000, 100 * 2 ** attempt);
      options.logger?.warn(
        { event: 'source.retry', err: failure, attempt, fromKey: nextKey, delayMs: delay },
        'reading the vault failed; reopening the page',
      );
      await sleep(delay);
      continue;
    }

    if (chunk.length > 0) {
      nextKey = (BigInt(chunk[chunk.length - 1]!.key) + 1n).toString();
      yield chunk;
    }
    if (pageRows < options.pageSize || BigInt(nextKey) > maxBigint) return;
  }
}
