import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand, DecryptCommand } from '@aws-sdk/client-kms';
import { parseTableConfig, TableConfigError } from '../src/db/table-config.js';
import { rowContext } from '../src/envelope.js';
import { runCli } from './helpers/cli.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';

let db: TestDatabase;
let kms: TestKms;
let dir: string;

const mapping = { name: 'app.documents', key: 'doc_id', matter: 'case_id', token: 'doc_ref', wrappedKey: 'dek_wrapped', kekId: 'kek_arn', rotatedAt: null };

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  dir = await mkdtemp(join(tmpdir(), 'rewrap-table-'));
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

async function writeMapping(content: string): Promise<string> {
  const path = join(dir, `${randomBytes(4).toString('hex')}.json`);
  await writeFile(path, content);
  return path;
}

describe('table mapping', () => {
  it('parses names and defaults', () => {
    const table = parseTableConfig(JSON.stringify({ name: 'app.docs', key: 'doc_id' }), 'inline');
    expect(table.name).toBe('app.docs');
    expect(table.key).toBe('doc_id');
    expect(table.matter).toBe('matter_id');
    expect(table.rotatedAt).toBe('rotated_at');
  });

  it('rejects bad mappings by field', () => {
    const cases: Array<[string, string]> = [
      ['{', 'not JSON'],
      ['[]', 'expected a JSON object'],
      ['{"name": "a.b.c"}', '"name"'],
      ['{"name": "docs; drop table x"}', '"name"'],
      ['{"name": "docs", "key": "id\\"; --"}', '"key"'],
      ['{"name": "docs", "colour": "red"}', '"colour"'],
      ['{"name": "docs", "rotatedAt": 5}', '"rotatedAt"'],
    ];
    for (const [text, expected] of cases) {
      expect(() => parseTableConfig(text, 'inline'), text).toThrow(TableConfigError);
      expect(() => parseTableConfig(text, 'inline'), text).toThrow(expected);
    }
  });

  it('rotates an application table', async () => {
    await db.client.query(`
      CREATE SCHEMA app;
      CREATE TABLE app.documents (doc_id bigint PRIMARY KEY, case_id text NOT NULL, doc_ref text NOT NULL, dek_wrapped bytea, kek_arn text NOT NULL)`);
    const source = (await kms.client.send(new CreateKeyCommand({ Description: 'mapped source' }))).KeyMetadata!.Arn!;
    const target = (await kms.client.send(new CreateKeyCommand({ Description: 'mapped target' }))).KeyMetadata!.Arn!;
    const deks = Array.from({ length: 30 }, () => randomBytes(32));
    const response = await fetch(new URL('/_emulator/wrap-batch', kms.emulator.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ KeyId: source, Items: deks.map((dek, i) => ({ Plaintext: dek.toString('base64'), EncryptionContext: rowContext(`case-${i % 3}`, `ref-${i}`) })) }),
    });
    const blobs = ((await response.json()) as { CiphertextBlobs: string[] }).CiphertextBlobs;
    for (const [i, blob] of blobs.entries()) {
      await db.client.query('INSERT INTO app.documents VALUES ($1, $2, $3, $4, $5)', [i + 1, `case-${i % 3}`, `ref-${i}`, Buffer.from(blob, 'base64'), source]);
    }
    // A NULL wrapped key, which this table allows, is quarantined rather than sent.
    await db.client.query(`INSERT INTO app.documents VALUES (100, 'case-0', 'ref-100', NULL, $1)`, [source]);

    const path = await writeMapping(JSON.stringify(mapping));
    const result = await runCli(['rotate', '--all', '--to', target, '--table-config', path, '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--json']);

    expect(result.code).toBe(3);
    const summary = JSON.parse(result.stdout.trim()) as { rewrapped: number; failed: number };
    expect(summary.rewrapped).toBe(30);
    expect(summary.failed).toBe(1);
    const { rows } = await db.client.query<{ doc_id: string; case_id: string; doc_ref: string; dek_wrapped: Buffer; kek_arn: string }>(
      'SELECT doc_id::text, case_id, doc_ref, dek_wrapped, kek_arn FROM app.documents WHERE doc_id < 100 ORDER BY documents.doc_id',
    );
    for (const [i, row] of rows.entries()) {
      expect(row.kek_arn).toBe(target);
      const output = await kms.client.send(new DecryptCommand({ CiphertextBlob: row.dek_wrapped, KeyId: target, EncryptionContext: rowContext(row.case_id, row.doc_ref) }));
      expect(Buffer.from(output.Plaintext!).equals(deks[i]!)).toBe(true);
    }
    const { rows: quarantined } = await db.client.query<{ table_name: string; row_key: string; error_code: string }>(
      'SELECT table_name, row_key, error_code FROM rewrap.quarantine',
    );
    expect(quarantined).toEqual([{ table_name: 'app.documents', row_key: '100', error_code: 'InvalidBlob' }]);
  });

  it('quarantines rows the database rejects', async () => {
    await db.client.query(`
      CREATE TABLE app.guarded (doc_id bigint PRIMARY KEY, case_id text NOT NULL, doc_ref text NOT NULL, dek_wrapped bytea NOT NULL, kek_arn text)`);
    const source = (await kms.client.send(new CreateKeyCommand({ Description: 'guarded source' }))).KeyMetadata!.Arn!;
    const target = (await kms.client.send(new CreateKeyCommand({ Description: 'guarded target' }))).KeyMetadata!.Arn!;
    const response = await fetch(new URL('/_emulator/wrap-batch', kms.emulator.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ KeyId: source, Items: Array.from({ length: 40 }, (_, i) => ({ Plaintext: randomBytes(32).toString('base64'), EncryptionContext: rowContext('case', `ref-${i}`) })) }),
    });
    const blobs = ((await response.json()) as { CiphertextBlobs: string[] }).CiphertextBlobs;
    for (const [i, blob] of blobs.entries()) {
      await db.client.query('INSERT INTO app.guarded VALUES ($1, $2, $3, $4, $5)', [i + 1, 'case', `ref-${i}`, Buffer.from(blob, 'base64'), source]);
    }
    // The application forbids moving row 7 off its key; row 8 has no KEK id at all.
    await db.client.query(`ALTER TABLE app.guarded ADD CONSTRAINT pinned CHECK (doc_id <> 7 OR kek_arn = '${source}')`);
    await db.client.query('UPDATE app.guarded SET kek_arn = NULL WHERE doc_id = 8');

    const path = await writeMapping(JSON.stringify({ ...mapping, name: 'app.guarded' }));
    const result = await runCli(['rotate', '--all', '--to', target, '--table-config', path, '--kms-endpoint', kms.emulator.url, '--database-url', db.url, '--json']);

    expect(result.code).toBe(3);
    const summary = JSON.parse(result.stdout.trim()) as { rewrapped: number; failed: number };
    expect(summary.rewrapped).toBe(38);
    expect(summary.failed).toBe(2);
    const { rows } = await db.client.query<{ row_key: string; error_code: string }>(
      `SELECT row_key, error_code FROM rewrap.quarantine WHERE table_name = 'app.guarded' ORDER BY row_key::bigint`,
    );
    expect(rows).toEqual([
      { row_key: '7', error_code: 'DatabaseError:23514' },
      { row_key: '8', error_code: 'InvalidRow' },
    ]);
    const { rows: pinned } = await db.client.query<{ kek_arn: string }>('SELECT kek_arn FROM app.guarded WHERE doc_id = 7');
    expect(pinned[0]!.kek_arn).toBe(source);
    expect(result.stderr).not.toContain('Failing row contains');
  });

  it('exits 2 when a mapped column is missing', async () => {
    const path = await writeMapping(JSON.stringify({ ...mapping, token: 'no_such_column' }));
    const result = await runCli(['rotate', '--all', '--to', 'alias/unused', '--table-config', path, '--kms-endpoint', kms.emulator.url, '--database-url', db.url]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('no_such_column');
  });

  it('exits 2 for an unreadable mapping file', async () => {
    const result = await runCli(['rotate', '--all', '--to', 'alias/unused', '--table-config', join(dir, 'missing.json'), '--database-url', db.url]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('missing.json');
  });
});
