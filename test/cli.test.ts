import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand } from '@aws-sdk/client-kms';
import { seedVault } from '../src/seed.js';
import { runCli, startCli, type CliRun } from './helpers/cli.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';

let db: TestDatabase;
let kms: TestKms;

async function newKey(): Promise<string> {
  return (await kms.client.send(new CreateKeyCommand({ Description: 'cli test target' }))).KeyMetadata!.Arn!;
}

async function waitForRewrapped(target: string, min: number, run: CliRun, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited: { code: number | null; stderr: string } | null = null;
  void run.done.then((result) => (exited = result));
  while (Date.now() < deadline) {
    if (exited !== null) {
      const { code, stderr } = exited as { code: number | null; stderr: string };
      throw new Error(`rotate exited with ${code} before rewrapping ${min} rows: ${stderr.slice(-1_000)}`);
    }
    const { rows } = await db.client.query<{ n: string }>(
      `SELECT COALESCE(sum(rewrapped), 0)::text AS n FROM rewrap.jobs WHERE status = 'running' AND target_kek = $1`,
      [target],
    );
    if (Number(rows[0]!.n) >= min) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`no running job rewrapped ${min} rows within ${timeoutMs} ms`);
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 3, rows: 3_000 });
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

describe('rewrap CLI', () => {
  it('exits 2 on usage errors', async () => {
    const noScope = await runCli(['rotate', '--to', 'alias/x', '--database-url', db.url]);
    expect(noScope.code).toBe(2);
    expect(noScope.stderr).toContain('--matter');
    const badQuota = await runCli(['rotate', '--all', '--to', 'alias/x', '--kms-quota', 'fast', '--database-url', db.url]);
    expect(badQuota.code).toBe(2);
    expect(badQuota.stderr).toContain('"fast"');
    const unknownKey = await runCli(['rotate', '--all', '--to', 'alias/missing', '--kms-endpoint', kms.emulator.url, '--database-url', db.url]);
    expect(unknownKey.code).toBe(2);
    expect(unknownKey.stderr).toContain('alias/missing');
    const badPrincipal = await runCli(['emergency', '--compromised', 'alias/x', '--since', '2026-01-01T00:00:00Z', '--rotation-principal-arn', 'rewrap-role', '--database-url', db.url]);
    expect(badPrincipal.code).toBe(2);
    expect(badPrincipal.stderr).toContain('"rewrap-role"');
  });

  it('prints one JSON summary and exits 0', async () => {
    const target = await newKey();
    const result = await runCli(['rotate', '--matter', 'matter-0001', '--to', target, '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--json', '--workers', '1']);
    expect(result.code).toBe(0);
    const summary = JSON.parse(result.stdout.trim()) as Record<string, unknown>;
    for (const field of ['scanned', 'rewrapped', 'conflicts', 'failed', 'seconds', 'rate']) {
      expect(typeof summary[field]).toBe('number');
    }
    expect(summary.rewrapped).toBe(1_000);
    const events = result.stderr.split('\n').filter((line) => line.startsWith('{')).map((line) => (JSON.parse(line) as { event?: string }).event);
    expect(events).toContain('kek.rotate.start');
    expect(events).toContain('kek.rotate.done');
    const { rows } = await db.client.query<{ action: string }>('SELECT action FROM rewrap.audit ORDER BY seq');
    expect(rows.map((row) => row.action)).toEqual(['rotate.start', 'rotate.finish']);
  });

  it('exits 75 while another job holds the scope', async () => {
    const target = await newKey();
    kms.emulator.configure({ quota: 200 });
    const first = startCli(['rotate', '--all', '--to', target, '--kms-quota', '200', '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--workers', '1']);
    try {
      await waitForRewrapped(target, 1, first);
      const second = await runCli(['rotate', '--matter', 'matter-0002', '--to', target, '--kms-endpoint', kms.emulator.url, '--database-url', db.url]);
      expect(second.code).toBe(75);
      expect(second.stderr).toContain('another rewrap job');
    } finally {
      first.child.kill('SIGKILL');
      await first.done;
      kms.emulator.configure({ quota: Infinity });
    }
  });

  it('drains and exits with a summary on SIGTERM', async () => {
    const target = await newKey();
    kms.emulator.configure({ quota: 300 });
    try {
      const run = startCli(['rotate', '--all', '--to', target, '--kms-quota', '300', '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--json', '--workers', '1', '--drain-timeout', '20']);
      await waitForRewrapped(target, 100, run);
      const signalledAt = Date.now();
      run.child.kill('SIGTERM');
      const result = await run.done;
      expect(Date.now() - signalledAt).toBeLessThan(20_000);
      expect(result.code).toBe(1);
      const summary = JSON.parse(result.stdout.trim()) as { status: string; rewrapped: number };
      expect(summary.status).toBe('interrupted');
      const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault WHERE kek_id = $1', [target]);
      // Every row the summary counts was committed before the exit.
      expect(Number(rows[0]!.n)).toBe(summary.rewrapped);
      expect(summary.rewrapped).toBeLessThan(3_000);
    } finally {
      kms.emulator.configure({ quota: Infinity });
    }
    const resumed = await runCli(['rotate', '--all', '--to', target, '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--json']);
    expect(resumed.code).toBe(0);
    const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault WHERE kek_id <> $1', [target]);
    expect(rows[0]!.n).toBe('0');
  });
});
