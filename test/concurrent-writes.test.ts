import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { CreateKeyCommand, DecryptCommand, GenerateDataKeyCommand } from '@aws-sdk/client-kms';
import { quoteVaultTable, defaultVaultTable } from '../src/db/table.js';
import { rowContext } from '../src/envelope.js';
import { rotate } from '../src/rotate/engine.js';
import { Writer } from '../src/rotate/writer.js';
import { seedVault } from '../src/seed.js';
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

async function newKey(): Promise<string> {
  return (await kms.client.send(new CreateKeyCommand({ Description: 'concurrency test target' }))).KeyMetadata!.Arn!;
}

describe('writer guard', () => {
  it('leaves a row the application changed and reports it', async () => {
    await db.client.query('TRUNCATE vault, vault_payload, rewrap.jobs CASCADE');
    await db.client.query(`INSERT INTO vault (id, matter_id, token, wrapped_key, kek_id) VALUES (1, 'm', 't', '\\x0102', 'old'), (2, 'm', 'u', '\\x0304', 'old')`);
    const job = await db.client.query<{ id: string }>(
      `INSERT INTO rewrap.jobs (kind, table_name, scope, scope_key, target_kek, status, host, pid) VALUES ('rotate', 'public.vault', '{}', 'x', 'new', 'running', 'h', 1) RETURNING id::text`,
    );
    // The application writes a new DEK to row 2 after the job read it.
    await db.client.query(`UPDATE vault SET wrapped_key = '\\x0506' WHERE id = 2`);
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    const writer = new Writer({ pool, table: quoteVaultTable(defaultVaultTable), tableName: 'public.vault', jobId: job.rows[0]!.id, targetKek: 'new' });
    try {
      const result = await writer.flush({
        rewrapped: [
          { key: '1', oldKek: 'old', newKek: 'new', oldBlob: Buffer.from([1, 2]), newBlob: Buffer.from([9, 9]) },
          { key: '2', oldKek: 'old', newKek: 'new', oldBlob: Buffer.from([3, 4]), newBlob: Buffer.from([8, 8]) },
        ],
        quarantined: [],
        scanned: 2,
        checkpoint: null,
      });
      expect(result.updated).toBe(1);
      expect(result.conflicts).toEqual(['2']);
    } finally {
      writer.close();
      await pool.end();
    }
    const { rows } = await db.client.query<{ id: string; wrapped_key: Buffer; kek_id: string }>('SELECT id::text, wrapped_key, kek_id FROM vault ORDER BY id');
    expect(rows[0]!.wrapped_key.toString('hex')).toBe('0909');
    expect(rows[0]!.kek_id).toBe('new');
    expect(rows[1]!.wrapped_key.toString('hex')).toBe('0506');
    expect(rows[1]!.kek_id).toBe('old');
  });
});

describe('application writes during a rotation', () => {
  it('neither overwrites nor loses rows', async () => {
    await db.client.query('TRUNCATE vault, vault_payload, rewrap.jobs CASCADE');
    const seeded = await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 2, rows: 3_000 });
    const target = await newKey();
    // The application's latest DEK per row it wrote; kept in memory only, never printed.
    const written = new Map<string, Buffer>();
    const deleted = new Set<string>();
    let nextInsert = 1_000_000;

    const app = new pg.Client({ connectionString: db.url });
    await app.connect();
    let running = true;
    // Like a real application, it wraps new DEKs under the old KEK until it
    // learns of the rotation (here after one second), then under the target.
    const appStarted = Date.now();
    const writeDek = async (id: string, matter: string, token: string, insert: boolean) => {
      const kek = Date.now() - appStarted < 1_000 ? seeded.keks.get(matter)! : target;
      const output = await kms.client.send(new GenerateDataKeyCommand({ KeyId: kek, KeySpec: 'AES_256', EncryptionContext: rowContext(matter, token) }));
      const blob = Buffer.from(output.CiphertextBlob!);
      if (insert) {
        await app.query('INSERT INTO vault (id, matter_id, token, wrapped_key, kek_id) VALUES ($1, $2, $3, $4, $5)', [id, matter, token, blob, kek]);
      } else {
        const result = await app.query('UPDATE vault SET wrapped_key = $2, kek_id = $3 WHERE id = $1', [id, blob, kek]);
        if (result.rowCount === 0) return;
      }
      written.set(id, Buffer.from(output.Plaintext!));
    };
    const appLoop = (async () => {
      let step = 0;
      while (running) {
        step += 1;
        const id = String(1 + Math.floor(Math.random() * 3_000));
        if (step % 7 === 0) {
          await app.query('DELETE FROM vault WHERE id = $1', [id]);
          deleted.add(id);
          written.delete(id);
        } else if (step % 3 === 0) {
          const newId = String(nextInsert++);
          await writeDek(newId, 'matter-0001', `doc-${newId}`, true);
        } else if (!deleted.has(id)) {
          const matter = Number(id) % 2 === 1 ? 'matter-0001' : 'matter-0002';
          await writeDek(id, matter, `doc-${id}`, false);
        }
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();

    let summary;
    try {
      summary = await rotate({ databaseUrl: db.url, matters: null, target, kmsEndpoint: kms.emulator.url, quota: 1_000, workers: 2, logger: captureLogger().logger });
    } finally {
      running = false;
      await appLoop;
      await app.end();
    }

    expect(summary.status).toBe('done');
    expect(written.size).toBeGreaterThan(50);
    const { rows } = await db.client.query<{ id: string; matter_id: string; token: string; wrapped_key: Buffer; kek_id: string }>(
      'SELECT id::text, matter_id, token, wrapped_key, kek_id FROM vault ORDER BY id',
    );
    const present = new Set(rows.map((row) => row.id));
    for (const id of deleted) expect(present.has(id)).toBe(false);
    const inserted = [...written.keys()].filter((id) => Number(id) >= 1_000_000);
    for (const id of inserted) expect(present.has(id)).toBe(true);
    expect(rows.length).toBe(3_000 - deleted.size + inserted.length);

    let stale = 0;
    let offTarget = 0;
    for (const row of rows) {
      const expected = written.get(row.id);
      if (row.kek_id !== target && expected === undefined) offTarget += 1;
      if (expected === undefined) continue;
      // A row the application wrote must hold the application's DEK, rewrapped or not.
      const output = await kms.client.send(
        new DecryptCommand({ CiphertextBlob: row.wrapped_key, KeyId: row.kek_id, EncryptionContext: rowContext(row.matter_id, row.token) }),
      );
      if (!Buffer.from(output.Plaintext!).equals(expected)) stale += 1;
    }
    expect(offTarget).toBe(0);
    expect(stale).toBe(0);
    for (const dek of written.values()) dek.fill(0);
  });
});
