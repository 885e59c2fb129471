import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand, DecryptCommand } from '@aws-sdk/client-kms';
import { rowContext } from '../src/envelope.js';
import { rotate } from '../src/rotate/engine.js';
import { copyBinary } from '../src/seed.js';
import { encodeTuple } from '../src/db/copy-binary.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

let db: TestDatabase;
let kms: TestKms;

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

const oddStrings = ['back\\slash', 'tab\there', 'new\nline', 'carriage\rreturn', `quote'"both`, 'ünïcödé ✓ 文字', '', '\\x41', 'comma,semi;colon', 'null\\N'];
const keys = ['9007199254740993', '9223372036854775807', '-9223372036854775808', '0', '9007199254740992'];

describe('odd values', () => {
  it('round-trip exactly through COPY and the KMS', async () => {
    const source = (await kms.client.send(new CreateKeyCommand({ Description: 'odd values source' }))).KeyMetadata!.Arn!;
    const target = (await kms.client.send(new CreateKeyCommand({ Description: 'odd values target' }))).KeyMetadata!.Arn!;
    const rows: Array<{ key: string; matter: string; token: string; dek: Buffer }> = [];
    for (let i = 0; i < 60; i++) {
      const key = keys[i] ?? String(1_000_000 + i);
      rows.push({ key, matter: oddStrings[i % oddStrings.length]!, token: oddStrings[(i * 3 + 1) % oddStrings.length]! + String(i), dek: randomBytes(32) });
    }
    const response = await fetch(new URL('/_emulator/wrap-batch', kms.emulator.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ KeyId: source, Items: rows.map((row) => ({ Plaintext: row.dek.toString('base64'), EncryptionContext: rowContext(row.matter, row.token) })) }),
    });
    const blobs = ((await response.json()) as { CiphertextBlobs: string[] }).CiphertextBlobs.map((blob) => Buffer.from(blob, 'base64'));
    // Random blobs of 60 rows cover every byte value, so escaping bugs would show.
    const seen = new Set<number>();
    for (const blob of blobs) for (const byte of blob) seen.add(byte);
    expect(seen.size).toBe(256);

    await copyBinary(
      db.client,
      'COPY public.vault (id, matter_id, token, wrapped_key, kek_id) FROM STDIN (FORMAT binary)',
      rows.map((row, i) => encodeTuple([
        { type: 'int8', value: row.key },
        { type: 'text', value: row.matter },
        { type: 'text', value: row.token },
        { type: 'bytea', value: blobs[i]! },
        { type: 'text', value: source },
      ])),
    );

    const summary = await rotate({ databaseUrl: db.url, matters: null, target, kmsEndpoint: kms.emulator.url, quota: Infinity, workers: 1, logger: captureLogger().logger });
    expect(summary.status).toBe('done');
    expect(summary.rewrapped).toBe(60);

    const { rows: stored } = await db.client.query<{ id: string; matter_id: string; token: string; wrapped_key: Buffer; kek_id: string }>(
      'SELECT id::text, matter_id, token, wrapped_key, kek_id FROM vault',
    );
    const byKey = new Map(stored.map((row) => [row.id, row]));
    for (const row of rows) {
      const found = byKey.get(row.key);
      expect(found?.matter_id).toBe(row.matter);
      expect(found?.token).toBe(row.token);
      expect(found?.kek_id).toBe(target);
      const output = await kms.client.send(
        new DecryptCommand({ CiphertextBlob: found!.wrapped_key, KeyId: target, EncryptionContext: rowContext(row.matter, row.token) }),
      );
      expect(Buffer.from(output.Plaintext!).equals(row.dek)).toBe(true);
    }
  });
});
