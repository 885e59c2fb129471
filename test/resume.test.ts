import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand } from '@aws-sdk/client-kms';
import { rotate, type RotateOptions } from '../src/rotate/engine.js';
import { seedVault } from '../src/seed.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

let db: TestDatabase;
let kms: TestKms;

async function newKey(): Promise<string> {
  return (await kms.client.send(new CreateKeyCommand({ Description: 'resume test target' }))).KeyMetadata!.Arn!;
}

async function countOn(kek: string): Promise<number> {
  const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault WHERE kek_id = $1', [kek]);
  return Number(rows[0]!.n);
}

function options(target: string, extra: Partial<RotateOptions> = {}): RotateOptions {
  return { databaseUrl: db.url, matters: null, target, kmsEndpoint: kms.emulator.url, quota: Infinity, workers: 1, logger: captureLogger().logger, ...extra };
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 2, rows: 600 });
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

describe('resume', () => {
  it('stops at once on a signal sent before start', async () => {
    const first = await newKey();
    expect((await rotate(options(first))).status).toBe('done');

    const second = await newKey();
    const controller = new AbortController();
    controller.abort();
    const stopped = await rotate(options(second, { signal: controller.signal }));

    expect(stopped.status).toBe('interrupted');
    expect(stopped.rewrapped).toBe(0);
    expect(await countOn(first)).toBe(600);
  });

  it('ignores the checkpoint of a finished job', async () => {
    // The job to `second` above stopped before its first flush. Its rerun must
    // start from the first key, not from where the finished job to `first` ended.
    const { rows } = await db.client.query<{ target_kek: string }>(`SELECT target_kek FROM rewrap.jobs WHERE status = 'interrupted'`);
    const second = rows[0]!.target_kek;

    const resumed = await rotate(options(second));

    expect(resumed.status).toBe('done');
    expect(resumed.rewrapped).toBe(600);
    expect(await countOn(second)).toBe(600);
  });

  it('sweeps the whole scope after resuming', async () => {
    const third = await newKey();
    // A crashed job to `third` had checkpointed the first 300 rows, but a row
    // before the checkpoint conflicted and was never rewrapped.
    await db.client.query(
      `INSERT INTO rewrap.jobs (kind, table_name, scope, scope_key, target_kek, status, host, pid, checkpoint)
       VALUES ('rotate', 'public.vault', '{"matters":null}', 'public.vault:*', $1, 'running', 'gone', 1, '300')`,
      [third],
    );
    await db.client.query(`UPDATE vault SET kek_id = $1 WHERE id BETWEEN 1 AND 300 AND id <> 42`, [third]);

    const resumed = await rotate(options(third));

    expect(resumed.status).toBe('done');
    expect(await countOn(third)).toBe(600);
  });
});
