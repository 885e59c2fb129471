import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { CreateKeyCommand } from '@aws-sdk/client-kms';
import { startEmbeddedPostgres } from '../src/db/embedded.js';
import { initSchema } from '../src/db/schema.js';
import { rotate, type RotateOptions } from '../src/rotate/engine.js';
import { seedVault } from '../src/seed.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

let db: TestDatabase;
let kms: TestKms;

async function newKey(): Promise<string> {
  return (await kms.client.send(new CreateKeyCommand({ Description: 'database fault target' }))).KeyMetadata!.Arn!;
}

async function reseed(client: pg.ClientBase, rows: number): Promise<void> {
  await client.query('TRUNCATE vault, vault_payload, rewrap.quarantine, rewrap.jobs CASCADE');
  await seedVault({ client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 2, rows });
}

async function countOff(client: pg.ClientBase, target: string): Promise<number> {
  const { rows } = await client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault WHERE kek_id <> $1', [target]);
  return Number(rows[0]!.n);
}

function options(url: string, target: string, extra: Partial<RotateOptions> = {}): RotateOptions {
  return { databaseUrl: url, matters: null, target, kmsEndpoint: kms.emulator.url, quota: 1_000, workers: 2, logger: captureLogger().logger, ...extra };
}

/** Runs `action` every `intervalMs` until the returned stop function is called; resolves to the number of runs that returned true. */
function every(intervalMs: number, action: () => Promise<boolean>): () => Promise<number> {
  let hits = 0;
  let active = true;
  const loop = (async () => {
    while (active) {
      if (await action().catch(() => false)) hits += 1;
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  })();
  return async () => {
    active = false;
    await loop;
    return hits;
  };
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

describe('database faults', () => {
  it('survives terminated reader and writer backends', async () => {
    await reseed(db.client, 3_000);
    const target = await newKey();
    const stop = every(300, async () => {
      const { rowCount } = await db.client.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'rewrap' AND pid <> pg_backend_pid()
           AND state <> 'idle' AND (query LIKE '%FROM "public"."vault" v%' OR query LIKE 'COPY rewrap_staging%' OR query LIKE '%WITH updated AS%')`,
      );
      return (rowCount ?? 0) > 0;
    });
    let summary;
    try {
      summary = await rotate(options(db.url, target));
    } finally {
      const terminated = await stop();
      expect(terminated).toBeGreaterThan(0);
    }
    expect(summary.status).toBe('done');
    expect(await countOff(db.client, target)).toBe(0);
  });

  it('recovers from COPY input failing halfway', async () => {
    await reseed(db.client, 2_000);
    const target = await newKey();
    const log = captureLogger();

    const summary = await rotate(options(db.url, target, { quota: Infinity, copyFaultEvery: 3, flushRows: 200, logger: log.logger }));

    expect(summary.status).toBe('done');
    expect(summary.rewrapped).toBe(2_000);
    expect(log.lines().some((line) => line.event === 'writer.retry')).toBe(true);
    expect(await countOff(db.client, target)).toBe(0);
  });

  it('keeps every transaction shorter than a page', async () => {
    await reseed(db.client, 3_000);
    const target = await newKey();
    let oldest = 0;
    let sessionsSeen = 0;
    const stop = every(100, async () => {
      const { rows } = await db.client.query<{ sessions: number; age: number | null }>(
        `SELECT count(*)::int AS sessions,
                max(extract(epoch FROM clock_timestamp() - xact_start))::float8 AS age
         FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'rewrap'`,
      );
      sessionsSeen = Math.max(sessionsSeen, rows[0]?.sessions ?? 0);
      oldest = Math.max(oldest, rows[0]?.age ?? 0);
      return true;
    });
    let summary;
    try {
      summary = await rotate(options(db.url, target, { quota: 600 }));
    } finally {
      expect(await stop()).toBeGreaterThan(10);
    }
    expect(summary.status).toBe('done');
    // The sampler saw the job's sessions, and none held a transaction longer
    // than a page, which is about two seconds of work at the quota.
    expect(sessionsSeen).toBeGreaterThan(0);
    expect(oldest).toBeLessThan(4);
  });

  it('survives a server restart', async () => {
    const server = await startEmbeddedPostgres();
    const client = new pg.Client({ connectionString: server.url });
    try {
      await client.connect();
      await initSchema(client);
      await reseed(client, 3_000);
      await client.end();
      const target = await newKey();
      const running = rotate(options(server.url, target, { quota: 800 }));
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      await server.restart();
      let summary = await running;
      if (summary.status !== 'done') {
        // A restart during the final bookkeeping may stop the job; a rerun finishes it.
        summary = await rotate(options(server.url, target, { quota: Infinity }));
      }
      expect(summary.status).toBe('done');
      const check = new pg.Client({ connectionString: server.url });
      await check.connect();
      try {
        expect(await countOff(check, target)).toBe(0);
      } finally {
        await check.end();
      }
    } finally {
      await client.end().catch(() => undefined);
      await server.stop();
    }
  });
});
