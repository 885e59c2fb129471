import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand, DisableKeyCommand } from '@aws-sdk/client-kms';
import { rotate, type RotateOptions } from '../src/rotate/engine.js';
import { seedVault } from '../src/seed.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

let db: TestDatabase;
let kms: TestKms;

async function newKey(): Promise<string> {
  return (await kms.client.send(new CreateKeyCommand({ Description: 'fault test target' }))).KeyMetadata!.Arn!;
}

async function reseed(rows: number, matters = 2): Promise<void> {
  await db.client.query('TRUNCATE vault, vault_payload, rewrap.quarantine, rewrap.jobs CASCADE');
  await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters, rows });
}

async function countOn(kek: string): Promise<number> {
  const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault WHERE kek_id = $1', [kek]);
  return Number(rows[0]!.n);
}

function options(target: string, extra: Partial<RotateOptions> = {}): RotateOptions {
  return {
    databaseUrl: db.url,
    matters: null,
    target,
    kmsEndpoint: kms.emulator.url,
    quota: Infinity,
    workers: 2,
    logger: captureLogger().logger,
    ...extra,
  };
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
});

afterEach(() => {
  kms.emulator.configure({ faults: {}, quota: Infinity, latencyMs: 0, jitterMs: 0 });
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

describe('bad rows', () => {
  it('quarantines bad blobs and contexts, rotates the rest', async () => {
    await reseed(400);
    // Row 1: context no longer matches the wrap. Row 2: one byte of the blob flipped.
    // Row 3: blob over the KMS limit. Row 4: empty blob.
    await db.client.query(`UPDATE vault SET token = token || '-moved' WHERE id = 1`);
    await db.client.query(`UPDATE vault SET wrapped_key = overlay(wrapped_key placing '\\xff'::bytea from 40 for 1) WHERE id = 2`);
    await db.client.query(`UPDATE vault SET wrapped_key = decode(repeat('ab', 7000), 'hex') WHERE id = 3`);
    await db.client.query(`UPDATE vault SET wrapped_key = '\\x'::bytea WHERE id = 4`);
    const { rows: before } = await db.client.query<{ id: string; wrapped_key: Buffer; kek_id: string }>(
      'SELECT id::text, wrapped_key, kek_id FROM vault WHERE id <= 4 ORDER BY id',
    );
    const target = await newKey();
    const log = captureLogger();

    const summary = await rotate(options(target, { logger: log.logger }));

    expect(summary.status).toBe('partial');
    expect(summary.failed).toBe(4);
    expect(summary.rewrapped).toBe(396);
    const { rows: after } = await db.client.query<{ id: string; wrapped_key: Buffer; kek_id: string }>(
      'SELECT id::text, wrapped_key, kek_id FROM vault WHERE id <= 4 ORDER BY id',
    );
    for (const [i, row] of after.entries()) {
      expect(row.wrapped_key.equals(before[i]!.wrapped_key)).toBe(true);
      expect(row.kek_id).toBe(before[i]!.kek_id);
    }
    const { rows: quarantined } = await db.client.query<{ row_key: string; error_code: string; error_message: string }>(
      'SELECT row_key, error_code, error_message FROM rewrap.quarantine ORDER BY row_key::bigint',
    );
    expect(quarantined.map((row) => [row.row_key, row.error_code])).toEqual([
      ['1', 'InvalidCiphertextException'],
      ['2', 'InvalidCiphertextException'],
      ['3', 'InvalidBlob'],
      ['4', 'InvalidBlob'],
    ]);
    for (const row of before.filter((r) => r.wrapped_key.length > 0)) {
      expect(log.text()).not.toContain(row.wrapped_key.toString('base64'));
    }
  });

  it('keeps quarantined rows out of the next run', async () => {
    const { rows } = await db.client.query<{ kek_id: string; n: string }>(
      'SELECT kek_id, count(*)::text AS n FROM vault GROUP BY kek_id ORDER BY count(*) DESC LIMIT 1',
    );
    const summary = await rotate(options(rows[0]!.kek_id));
    expect(summary.scanned).toBe(0);
    expect(summary.status).toBe('partial');
    expect(summary.quarantined).toBe(4);
  });

  it('quarantines rows whose source key is disabled', async () => {
    await reseed(300, 3);
    const { rows } = await db.client.query<{ kek_id: string }>(`SELECT kek_id FROM vault WHERE matter_id = 'matter-0001' LIMIT 1`);
    const disabled = rows[0]!.kek_id;
    await kms.client.send(new DisableKeyCommand({ KeyId: disabled }));
    const target = await newKey();

    const summary = await rotate(options(target));

    expect(summary.status).toBe('partial');
    expect(summary.failed).toBe(100);
    expect(summary.rewrapped).toBe(200);
    expect(await countOn(disabled)).toBe(100);
    const { rows: codes } = await db.client.query<{ error_code: string }>('SELECT DISTINCT error_code FROM rewrap.quarantine');
    expect(codes).toEqual([{ error_code: 'DisabledException' }]);
  });
});

describe('transient faults', () => {
  it('retries KMS errors, resets and stalls to completion', async () => {
    await reseed(1_000);
    kms.emulator.configure({
      faults: { ReEncrypt: { errorRate: 0.15, resetRate: 0.05, stallRate: 0.01, stallMs: 2_000 } },
    });
    const target = await newKey();

    const summary = await rotate(options(target, { kmsRequestTimeoutMs: 500 }));

    expect(summary.status).toBe('done');
    expect(summary.rewrapped).toBe(1_000);
    expect(summary.failed).toBe(0);
    expect(summary.retries).toBeGreaterThan(0);
    expect(await countOn(target)).toBe(1_000);
  });

  it('stops resumable when the KMS stays unavailable', async () => {
    await reseed(500);
    kms.emulator.configure({ faults: { ReEncrypt: { errorRate: 1 } } });
    const target = await newKey();

    const stopped = await rotate(options(target, { maxRowAttempts: 3 }));

    expect(stopped.status).toBe('interrupted');
    expect(stopped.failed).toBe(0);
    expect(await countOn(target)).toBe(0);
    const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM rewrap.quarantine');
    expect(rows[0]!.n).toBe('0');

    kms.emulator.configure({ faults: {} });
    const resumed = await rotate(options(target));
    expect(resumed.status).toBe('done');
    expect(await countOn(target)).toBe(500);
  });

  it('requeues batches of workers that throw or exit', async () => {
    await reseed(1_000);
    const target = await newKey();

    const summary = await rotate(options(target, { workerFaults: { throwRate: 0.1, exitRate: 0.05 }, batchSize: 20 }));

    expect(summary.status).toBe('done');
    expect(summary.retries).toBeGreaterThan(0);
    expect(await countOn(target)).toBe(1_000);
  });
});

describe('quota', () => {
  it('never exceeds the quota in any second', async () => {
    await reseed(2_400);
    const quota = 800;
    kms.emulator.configure({ quota });
    kms.emulator.resetStats();
    const target = await newKey();

    const summary = await rotate(options(target, { quota }));

    const stats = kms.emulator.stats();
    expect(summary.status).toBe('done');
    expect(stats.maxPerSecond).toBeLessThanOrEqual(quota);
    // Grants stay under the quota in every second. A request delayed past a
    // second boundary on a loaded host may still be throttled, at most 0.1%.
    expect(stats.throttled).toBeLessThanOrEqual(Math.floor(summary.kmsRequests * 0.001));
    expect(await countOn(target)).toBe(2_400);

  });

  it('slows down when the real quota is lower', async () => {
    await reseed(1_500);
    kms.emulator.configure({ quota: 400 });
    kms.emulator.resetStats();
    const target = await newKey();

    const summary = await rotate(options(target, { quota: 1_000 }));

    expect(summary.status).toBe('done');
    expect(summary.failed).toBe(0);
    expect(summary.throttled).toBeGreaterThan(0);
    expect(summary.throttled / summary.kmsRequests).toBeLessThan(0.25);
    expect(await countOn(target)).toBe(1_500);
  });
});
