import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand } from '@aws-sdk/client-kms';
import { decryptEnvelope, rowContext } from '../src/envelope.js';
import { rotate } from '../src/rotate/engine.js';
import { seedVault } from '../src/seed.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

let db: TestDatabase;
let kms: TestKms;

async function newKey(): Promise<string> {
  const output = await kms.client.send(new CreateKeyCommand({ Description: 'rotation target' }));
  return output.KeyMetadata!.Arn!;
}

async function vaultRows() {
  const { rows } = await db.client.query<{ id: string; matter_id: string; token: string; wrapped_key: Buffer; kek_id: string }>(
    'SELECT id::text, matter_id, token, wrapped_key, kek_id FROM vault ORDER BY id',
  );
  return rows;
}

async function payloadSnapshot(): Promise<string> {
  const { rows } = await db.client.query<{ digest: string }>(
    `SELECT md5(string_agg(id::text || ':' || encode(iv, 'hex') || ':' || encode(ciphertext, 'hex'), ',' ORDER BY id)) AS digest
     FROM vault_payload`,
  );
  return rows[0]!.digest;
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 4, rows: 3_000 });
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

describe('rotate', () => {
  it('moves every row to the target and keeps payloads readable', async () => {
    const before = await vaultRows();
    const payloadsBefore = await payloadSnapshot();
    const target = await newKey();
    const log = captureLogger();

    const summary = await rotate({
      databaseUrl: db.url,
      matters: null,
      target,
      kmsEndpoint: kms.emulator.url,
      quota: Infinity,
      workers: 2,
      logger: log.logger,
    });

    expect(summary.status).toBe('done');
    expect(summary.scanned).toBe(3_000);
    expect(summary.rewrapped).toBe(3_000);
    expect(summary.failed).toBe(0);
    expect(summary.conflicts).toBe(0);

    const after = await vaultRows();
    expect(after.length).toBe(before.length);
    expect(after.every((row) => row.kek_id === target)).toBe(true);
    expect(after.every((row, i) => !row.wrapped_key.equals(before[i]!.wrapped_key))).toBe(true);
    expect(await payloadSnapshot()).toBe(payloadsBefore);

    // Every 100th row: the DEK unwraps under the target with its own context and opens its payload.
    const { rows: sample } = await db.client.query<{ id: string; matter_id: string; token: string; wrapped_key: Buffer; iv: Buffer; ciphertext: Buffer }>(
      `SELECT v.id::text, v.matter_id, v.token, v.wrapped_key, p.iv, p.ciphertext
       FROM vault v JOIN vault_payload p USING (id) WHERE v.id % 100 = 0`,
    );
    expect(sample.length).toBe(30);
    for (const row of sample) {
      const plaintext = await decryptEnvelope(
        kms.client,
        { wrappedKey: row.wrapped_key, kekId: target, iv: row.iv, ciphertext: row.ciphertext },
        rowContext(row.matter_id, row.token),
      );
      expect(plaintext.length).toBe(64);
    }

    const events = log.lines().map((line) => line.event);
    expect(events).toContain('kek.rotate.start');
    expect(events).toContain('kek.rotate.done');
    for (const row of before.slice(0, 50)) {
      expect(log.text()).not.toContain(row.wrapped_key.toString('base64'));
      expect(log.text()).not.toContain(row.wrapped_key.toString('hex'));
    }
  });

  it('rewraps nothing on a second run', async () => {
    const { rows } = await db.client.query<{ kek_id: string }>('SELECT DISTINCT kek_id FROM vault');
    expect(rows.length).toBe(1);
    const summary = await rotate({
      databaseUrl: db.url,
      matters: null,
      target: rows[0]!.kek_id,
      kmsEndpoint: kms.emulator.url,
      quota: Infinity,
      workers: 1,
      logger: captureLogger().logger,
    });
    expect(summary.status).toBe('done');
    expect(summary.scanned).toBe(0);
    expect(summary.rewrapped).toBe(0);
    expect(summary.kmsRequests).toBe(0);
  });

  it('rotates only the matter it is given', async () => {
    const target = await newKey();
    const summary = await rotate({
      databaseUrl: db.url,
      matters: ['matter-0002'],
      target,
      kmsEndpoint: kms.emulator.url,
      quota: Infinity,
      workers: 1,
      logger: captureLogger().logger,
    });
    expect(summary.rewrapped).toBe(750);
    const { rows } = await db.client.query<{ matter_id: string; n: string }>(
      'SELECT matter_id, count(*)::text AS n FROM vault WHERE kek_id = $1 GROUP BY matter_id',
      [target],
    );
    expect(rows).toEqual([{ matter_id: 'matter-0002', n: '750' }]);
  });
});
