import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand } from '@aws-sdk/client-kms';
import { seedVault } from '../src/seed.js';
import { runCli } from './helpers/cli.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';

let db: TestDatabase;
let kms: TestKms;
let target: string;

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 2, rows: 200 });
  target = (await kms.client.send(new CreateKeyCommand({ Description: 'quarantine test target' }))).KeyMetadata!.Arn!;
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

function rotateArgs(): string[] {
  return ['rotate', '--all', '--to', target, '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--json', '--workers', '1'];
}

describe('quarantine commands', () => {
  it('rotate exits 3 with quarantined rows', async () => {
    // The token no longer matches the context the DEK was wrapped with.
    await db.client.query(`UPDATE vault SET token = 'moved' WHERE id IN (5, 6)`);
    const result = await runCli(rotateArgs());
    expect(result.code).toBe(3);
    const summary = JSON.parse(result.stdout.trim()) as { status: string; failed: number; rewrapped: number };
    expect(summary.status).toBe('partial');
    expect(summary.failed).toBe(2);
    expect(summary.rewrapped).toBe(198);
  });

  it('list shows reasons without key values', async () => {
    const result = await runCli(['quarantine', 'list', '--json', '--database-url', db.url]);
    expect(result.code).toBe(0);
    const entries = result.stdout.trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(entries.map((entry) => entry.rowKey)).toEqual(['5', '6']);
    expect(entries.every((entry) => entry.errorCode === 'InvalidCiphertextException')).toBe(true);
    const { rows } = await db.client.query<{ wrapped_key: Buffer }>('SELECT wrapped_key FROM vault WHERE id IN (5, 6)');
    for (const row of rows) {
      expect(result.stdout).not.toContain(row.wrapped_key.toString('base64'));
      expect(result.stdout).not.toContain(row.wrapped_key.toString('hex'));
    }
  });

  it('retry needs a selection', async () => {
    const result = await runCli(['quarantine', 'retry', '--database-url', db.url]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--all');
  });

  it('retry releases rows for the next rotate', async () => {
    // The application repairs one row's token; the other stays broken.
    await db.client.query(`UPDATE vault SET token = 'doc-5' WHERE id = 5`);
    const released = await runCli(['quarantine', 'retry', '--all', '--database-url', db.url]);
    expect(released.code).toBe(0);
    expect(released.stdout).toContain('released 2 rows');

    const result = await runCli(rotateArgs());
    expect(result.code).toBe(3);
    const summary = JSON.parse(result.stdout.trim()) as { rewrapped: number; failed: number };
    expect(summary.rewrapped).toBe(1);
    expect(summary.failed).toBe(1);
    const { rows } = await db.client.query<{ row_key: string; resolved_at: Date | null }>(
      'SELECT row_key, resolved_at FROM rewrap.quarantine ORDER BY quarantine.id',
    );
    expect(rows.filter((row) => row.resolved_at === null).map((row) => row.row_key)).toEqual(['6']);
  });
});
