import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DescribeKeyCommand } from '@aws-sdk/client-kms';
import pg from 'pg';
import { AuditTrail, genesisHash, recordHash } from '../src/audit/trail.js';
import { lifecycleCommands } from '../src/cli/lifecycle-commands.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

let db: TestDatabase;
let kms: TestKms;
let pool: pg.Pool;
let trail: AuditTrail;

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  trail = new AuditTrail({ pool, kms: kms.client, logger: captureLogger().logger });
});

afterAll(async () => {
  await pool?.end();
  await kms?.close();
  await db?.drop();
});

/** Empties the trail and appends five records. */
async function freshTrail(): Promise<void> {
  await db.client.query('TRUNCATE rewrap.audit, rewrap.audit_head');
  for (let i = 1; i <= 5; i++) await trail.append('test.action', { index: i, nested: { b: 2, a: 1 } });
}

describe('audit trail', () => {
  beforeEach(freshTrail);

  it('verifies an intact trail', async () => {
    const result = await trail.verify();
    expect(result.ok).toBe(true);
    expect(result.records).toBe(5);
    expect(result.headSeq).toBe(5);
  });

  it('chains records from genesis', async () => {
    const records = await trail.records();
    expect(records[0]!.prevHash).toBe(genesisHash);
    for (let i = 1; i < records.length; i++) expect(records[i]!.prevHash).toBe(records[i - 1]!.hash);
    for (const record of records) expect(recordHash(record)).toBe(record.hash);
  });

  it('names its HMAC signing key', async () => {
    const records = await trail.records();
    const { rows } = await db.client.query<{ key_arn: string }>(`SELECT key_arn FROM rewrap.keys WHERE key_class = 'audit-signing'`);
    expect(rows.length).toBe(1);
    expect(new Set(records.map((record) => record.macKeyArn))).toEqual(new Set([rows[0]!.key_arn]));
    const metadata = (await kms.client.send(new DescribeKeyCommand({ KeyId: rows[0]!.key_arn }))).KeyMetadata!;
    expect(metadata.KeySpec).toBe('HMAC_256');
  });

  it('detects an edited record', async () => {
    await db.client.query(`UPDATE rewrap.audit SET details = '{"index": 99}' WHERE seq = 3`);
    const result = await trail.verify();
    expect(result.ok).toBe(false);
    expect(result.firstBroken?.seq).toBe(3);
    expect(result.firstBroken?.reason).toMatch(/edited/);
  });

  it('detects an edit with a recomputed hash', async () => {
    const record = (await trail.records())[2]!;
    const forged = { ...record, details: { index: 99 } };
    await db.client.query(`UPDATE rewrap.audit SET details = $1, hash = $2 WHERE seq = 3`, [JSON.stringify(forged.details), recordHash(forged)]);
    const result = await trail.verify();
    expect(result.ok).toBe(false);
    expect(result.firstBroken?.seq).toBe(3);
    expect(result.firstBroken?.reason).toMatch(/MAC/);
  });

  it('detects a deleted record', async () => {
    await db.client.query('DELETE FROM rewrap.audit WHERE seq = 3');
    const result = await trail.verify();
    expect(result.ok).toBe(false);
    expect(result.firstBroken?.seq).toBe(3);
    expect(result.firstBroken?.reason).toMatch(/missing/);
  });

  it('detects reordered records', async () => {
    await db.client.query('UPDATE rewrap.audit SET seq = -2 WHERE seq = 2');
    await db.client.query('UPDATE rewrap.audit SET seq = 2 WHERE seq = 3');
    await db.client.query('UPDATE rewrap.audit SET seq = 3 WHERE seq = -2');
    const result = await trail.verify();
    expect(result.ok).toBe(false);
    expect(result.firstBroken?.seq).toBe(2);
  });

  it('detects a truncated tail', async () => {
    await db.client.query('DELETE FROM rewrap.audit WHERE seq >= 4');
    const result = await trail.verify();
    expect(result.ok).toBe(false);
    expect(result.firstBroken?.seq).toBe(4);
    expect(result.firstBroken?.reason).toMatch(/truncated/);
  });

  it('detects a head moved back', async () => {
    const third = (await trail.records())[2]!;
    await db.client.query('DELETE FROM rewrap.audit WHERE seq >= 4');
    await db.client.query('UPDATE rewrap.audit_head SET seq = 3, hash = $1', [third.hash]);
    const result = await trail.verify();
    expect(result.ok).toBe(false);
    expect(result.firstBroken?.reason).toMatch(/head/);
  });

  it('detects a deleted head', async () => {
    await db.client.query('DELETE FROM rewrap.audit_head');
    const result = await trail.verify();
    expect(result.ok).toBe(false);
    expect(result.firstBroken?.reason).toMatch(/head row is missing/);
  });

  it('appends after verification', async () => {
    await trail.append('test.after', { ok: true });
    const result = await trail.verify();
    expect(result.ok).toBe(true);
    expect(result.records).toBe(6);
  });

  it('serialises concurrent appends', async () => {
    await Promise.all(Array.from({ length: 6 }, (_, i) => trail.append('test.concurrent', { i })));
    const result = await trail.verify();
    expect(result.firstBroken).toBeUndefined();
    expect(result.records).toBe(11);
  });
});

describe('audit commands', () => {
  beforeEach(freshTrail);

  const cli = (args: string[]) => lifecycleCommands.audit!([...args, '--database-url', db.url, '--kms-endpoint', kms.emulator.url], captureLogger().logger);

  it('verify exits 0 when intact', async () => {
    expect(await cli(['verify', '--json'])).toBe(0);
  });

  it('verify exits 1 when tampered', async () => {
    await db.client.query('DELETE FROM rewrap.audit WHERE seq = 5');
    expect(await cli(['verify', '--json'])).toBe(1);
  });

  it('export writes records, then the head', async () => {
    const file = join(await mkdtemp(join(tmpdir(), 'rewrap-audit-')), 'audit.jsonl');
    expect(await cli(['export', '--out', file])).toBe(0);
    const lines = (await readFile(file, 'utf8')).trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.length).toBe(6);
    expect(lines.slice(0, 5).map((line) => line.seq)).toEqual([1, 2, 3, 4, 5]);
    expect((lines[5]!.head as { seq: number }).seq).toBe(5);
  });
});

