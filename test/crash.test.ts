import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand, DecryptCommand } from '@aws-sdk/client-kms';
import { rowContext } from '../src/envelope.js';
import { seedVault } from '../src/seed.js';
import { runCli, startCli } from './helpers/cli.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';

let db: TestDatabase;
let kms: TestKms;
const rows = 6_000;
// Low enough that 20 short-lived runs cannot finish the job between them.
const quota = 300;

async function payloadDigest(): Promise<string> {
  const { rows: result } = await db.client.query<{ digest: string }>(
    `SELECT md5(string_agg(id::text || encode(iv, 'hex') || encode(ciphertext, 'hex'), ',' ORDER BY id)) AS digest FROM vault_payload`,
  );
  return result[0]!.digest;
}

async function countWhere(sql: string, params: unknown[] = []): Promise<number> {
  const { rows: result } = await db.client.query<{ n: string }>(`SELECT count(*)::text AS n FROM vault WHERE ${sql}`, params);
  return Number(result[0]!.n);
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms({ quota });
  await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 5, rows });
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

describe('kill -9 mid-run', () => {
  it('resumes after 20 kills and leaves every DEK readable', async () => {
    const target = (await kms.client.send(new CreateKeyCommand({ Description: 'crash test target' }))).KeyMetadata!.Arn!;
    const payloadsBefore = await payloadDigest();
    const args = ['rotate', '--all', '--to', target, '--kms-quota', String(quota), '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--json', '--workers', '2'];

    let kills = 0;
    for (let attempt = 0; attempt < 20; attempt++) {
      const run = startCli(args);
      // Startup takes about a second, so delays from 0.3 to 3 s hit startup, reading, rewrapping and flushing.
      await new Promise((resolve) => setTimeout(resolve, 300 + Math.random() * 2_700));
      run.child.kill('SIGKILL');
      const result = await run.done;
      expect(result.signal).toBe('SIGKILL');
      kills += 1;
      expect(await countWhere('true')).toBe(rows);
    }

    expect(kills).toBe(20);
    const onTargetBefore = await countWhere('kek_id = $1', [target]);
    expect(onTargetBefore).toBeGreaterThan(0);
    kms.emulator.configure({ quota: 5_000 });
    const final = await runCli(args.map((arg) => (arg === String(quota) ? '5000' : arg)));
    expect(final.code).toBe(0);
    const summary = JSON.parse(final.stdout.trim()) as { rewrapped: number; status: string };
    expect(summary.status).toBe('done');
    // Rows committed by the killed runs are not rewrapped again.
    expect(summary.rewrapped).toBe(rows - onTargetBefore);

    expect(await countWhere('true')).toBe(rows);
    expect(await countWhere('kek_id <> $1', [target])).toBe(0);
    expect(await payloadDigest()).toBe(payloadsBefore);

    // Every blob unwraps under the KEK its row names, with the row's own context.
    kms.emulator.configure({ quota: Infinity });
    const { rows: all } = await db.client.query<{ matter_id: string; token: string; wrapped_key: Buffer; kek_id: string }>(
      'SELECT matter_id, token, wrapped_key, kek_id FROM vault ORDER BY id',
    );
    let unreadable = 0;
    for (let i = 0; i < all.length; i += 50) {
      const slice = all.slice(i, i + 50);
      const results = await Promise.allSettled(
        slice.map((row) =>
          kms.client.send(new DecryptCommand({ CiphertextBlob: row.wrapped_key, KeyId: row.kek_id, EncryptionContext: rowContext(row.matter_id, row.token) })),
        ),
      );
      unreadable += results.filter((result) => result.status === 'rejected').length;
    }
    expect(unreadable).toBe(0);
  });
});
