/**
 * End-to-end demonstration on real parts: seeds a vault with DEKs under one
 * KEK per matter, rotates every matter to a new KEK, then checks that no row
 * is left on an old KEK and that a sample of payloads decrypts through the
 * new wraps. Uses DATABASE_URL when set, else an embedded PostgreSQL; the KMS
 * emulator runs in this process. Exits 0 only if every check holds.
 */
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import pg from 'pg';
import { databaseFromEnvironment } from '../src/db/embedded.js';
import { initSchema } from '../src/db/schema.js';
import { decryptEnvelope, rowContext } from '../src/envelope.js';
import { createKmsClient } from '../src/kms/client.js';
import { startEmulatorInThread } from '../src/kms/emulator/thread.js';
import { createLogger } from '../src/log.js';
import { rotate, type RotateSummary } from '../src/rotate/engine.js';
import { createMatterKeys, seedVault } from '../src/seed.js';

const matters = Number(process.env.DEMO_MATTERS ?? 20);
const rows = Number(process.env.DEMO_ROWS ?? 200_000);
const quota = Number(process.env.DEMO_KMS_QUOTA ?? 10_000);
const sampleSize = 200;

async function main(): Promise<boolean> {
  const logger = createLogger('rewrap-demo', process.env.REWRAP_LOG_LEVEL ?? 'warn');
  if (process.env.DATABASE_URL === undefined || process.env.DATABASE_URL === '') console.log('starting embedded PostgreSQL ...');
  const database = await databaseFromEnvironment(logger);
  const databaseUrl = database.url;
  // The emulator gets a thread of its own, so that it does not compete with the engine's main thread.
  const emulator = await startEmulatorInThread({ quota });
  const kms = createKmsClient({ endpoint: emulator.url });
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    await initSchema(client, logger);
    // A fresh matter prefix keeps this run's rows apart from any earlier run in the same database.
    const prefix = `demo-${randomBytes(3).toString('hex')}-`;
    console.log(`seeding ${rows} DEKs over ${matters} matters (KMS emulator at ${emulator.url}, quota ${quota}/s) ...`);
    let startedAt = Date.now();
    const seeded = await seedVault({ client, kms, emulatorUrl: emulator.url, matters, rows, matterPrefix: prefix, logger });
    console.log(`seeded in ${((Date.now() - startedAt) / 1000).toFixed(1)}s`);

    const matterIds = [...seeded.keks.keys()];
    const newKeks = await createMatterKeys(kms, matterIds, 'demo-rotation');
    console.log(`rotating ${matterIds.length} matters to new per-matter KEKs on ${availableParallelism()} cores ...`);
    startedAt = Date.now();
    const summaries: RotateSummary[] = [];
    for (const matter of matterIds) {
      summaries.push(
        await rotate({ databaseUrl, matters: [matter], target: newKeks.get(matter)!, kmsEndpoint: emulator.url, quota, logger }),
      );
    }
    const seconds = (Date.now() - startedAt) / 1000;
    const total = summaries.reduce(
      (sum, s) => ({ scanned: sum.scanned + s.scanned, rewrapped: sum.rewrapped + s.rewrapped, conflicts: sum.conflicts + s.conflicts, failed: sum.failed + s.failed }),
      { scanned: 0, rewrapped: 0, conflicts: 0, failed: 0 },
    );
    const stats = await emulator.stats();
    console.log(
      `rotated: scanned ${total.scanned}, rewrapped ${total.rewrapped}, conflicts ${total.conflicts}, failed ${total.failed} ` +
        `in ${seconds.toFixed(1)}s (${Math.round(total.rewrapped / seconds)} rows/s); ` +
        `KMS saw at most ${stats.maxPerSecond} requests in one second, ${stats.throttled} throttled`,
    );

    const left = await client.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM vault v
       WHERE v.matter_id = ANY($1::text[]) AND v.kek_id <> ($2::jsonb ->> v.matter_id)`,
      [matterIds, JSON.stringify(Object.fromEntries(newKeks))],
    );
    const leftOnOld = Number(left.rows[0]!.n);
    console.log(`rows still on an old KEK: ${leftOnOld}`);

    const sample = await client.query<{ matter_id: string; token: string; wrapped_key: Buffer; kek_id: string; iv: Buffer; ciphertext: Buffer }>(
      `SELECT v.matter_id, v.token, v.wrapped_key, v.kek_id, p.iv, p.ciphertext
       FROM vault v JOIN vault_payload p USING (id)
       WHERE v.matter_id = ANY($1::text[]) ORDER BY random() LIMIT $2`,
      [matterIds, sampleSize],
    );
    let decrypted = 0;
    for (const row of sample.rows) {
      try {
        await decryptEnvelope(kms, { wrappedKey: row.wrapped_key, kekId: newKeks.get(row.matter_id)!, iv: row.iv, ciphertext: row.ciphertext }, rowContext(row.matter_id, row.token));
        decrypted += 1;
      } catch (error) {
        console.error(`payload of matter ${row.matter_id}, token ${row.token} did not decrypt: ${(error as Error).name}`);
      }
    }
    console.log(`sample payloads decrypted through the new wraps: ${decrypted}/${sample.rows.length}`);

    const ok =
      total.rewrapped === rows && total.failed === 0 && leftOnOld === 0 && decrypted === sample.rows.length && sample.rows.length > 0 && stats.throttled === 0;
    console.log(ok ? 'PASS: every DEK is on its new KEK and the payloads decrypt' : 'FAIL: see the lines above');
    return ok;
  } finally {
    await client.end();
    kms.destroy();
    await emulator.close();
    await database.close();
  }
}

main().then(
  (ok) => {
    process.exitCode = ok ? 0 : 1;
  },
  (error: unknown) => {
    console.error('demo failed:', error);
    process.exitCode = 1;
  },
);
