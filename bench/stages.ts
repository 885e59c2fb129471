/**
 * Micro-benchmarks of each pipeline stage, with tinybench:
 *   - stream read: one keyset page of 5,000 rows through pg-query-stream;
 *   - rewrap batch: 50 concurrent ReEncrypt calls through each transport;
 *   - COPY flush: 5,000 rows through the writer's binary COPY and guarded UPDATE.
 *
 *   npm run build && node dist/bench/stages.js [--json]
 *
 * Uses DATABASE_URL, or an embedded PostgreSQL when it is unset, and runs the
 * KMS emulator on a thread of its own with no quota. Rates are rows per
 * second of one stage alone, so they bound what the whole pipeline can do.
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { Bench } from 'tinybench';
import { CreateKeyCommand } from '@aws-sdk/client-kms';
import { databaseFromEnvironment } from '../src/db/embedded.js';
import { initSchema } from '../src/db/schema.js';
import { defaultVaultTable, quoteVaultTable } from '../src/db/table.js';
import { rowContext } from '../src/envelope.js';
import { createKmsClient } from '../src/kms/client.js';
import { startEmulatorInThread } from '../src/kms/emulator/thread.js';
import { createKmsTransport, kmsTransportNames } from '../src/kms/transport/index.js';
import { readScope } from '../src/rotate/source.js';
import { Writer } from '../src/rotate/writer.js';
import { seedVault } from '../src/seed.js';

const { values } = parseArgs({ options: { json: { type: 'boolean', default: false } } });
const pageRows = 5_000;
const batchRows = 50;
const flushRows = 5_000;

async function main(): Promise<void> {
  const database = await databaseFromEnvironment();
  const databaseUrl = database.url;
  const emulator = await startEmulatorInThread({ quota: 0 });
  const kms = createKmsClient({ endpoint: emulator.url });
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 2 });
  try {
    await initSchema(client);
    const prefix = `stages-${Date.now().toString(36)}-`;
    const seeded = await seedVault({ client, kms, emulatorUrl: emulator.url, matters: 1, rows: 20_000, matterPrefix: prefix });
    await client.query('ANALYZE vault');
    const matter = [...seeded.keks.keys()][0]!;
    const sourceKek = seeded.keks.get(matter)!;
    const target = (await kms.send(new CreateKeyCommand({ Description: 'stage benchmark target' }))).KeyMetadata!.Arn!;
    const table = quoteVaultTable(defaultVaultTable);

    const { rows: sample } = await client.query<{ key: string; token: string; blob: Buffer; kek: string }>(
      `SELECT id::text AS key, token, wrapped_key AS blob, kek_id AS kek FROM vault WHERE matter_id = $1 ORDER BY id LIMIT $2`,
      [matter, flushRows],
    );
    const job = await client.query<{ id: string }>(
      `INSERT INTO rewrap.jobs (kind, table_name, scope, scope_key, target_kek, status, host, pid)
       VALUES ('bench', 'public.vault', '{}', $1, $2, 'running', 'bench', $3) RETURNING id::text`,
      [`bench:${prefix}`, target, process.pid],
    );
    const writer = new Writer({ pool, table, tableName: 'public.vault', jobId: job.rows[0]!.id, targetKek: target });
    const transports = kmsTransportNames.map((name) => createKmsTransport(name, { endpoint: emulator.url, maxSockets: batchRows }));

    const bench = new Bench({ time: 3_000, warmupTime: 500 });
    bench.add(`stream read (${pageRows} rows)`, async () => {
      let count = 0;
      const source = readScope({
        pool, table, tableName: 'public.vault', matters: [matter], target, pageSize: pageRows, fetchSize: 1_000, chunkSize: 500, startKey: null,
      });
      for await (const chunk of source) {
        count += chunk.length;
        if (count >= pageRows) break;
      }
    });
    for (const transport of transports) {
      bench.add(`rewrap batch (${batchRows} rows, ${transport.name})`, async () => {
        await Promise.all(
          sample.slice(0, batchRows).map((row) =>
            transport.reEncrypt({
              CiphertextBlob: row.blob,
              SourceKeyId: sourceKek,
              SourceEncryptionContext: rowContext(matter, row.token),
              DestinationKeyId: target,
              DestinationEncryptionContext: rowContext(matter, row.token),
            }),
          ),
        );
      });
    }
    // Each flush writes every row back with its own blob and KEK id, so the
    // guard matches every time and each run does the same work.
    const unchanged = sample.map((row: { key: string; blob: Buffer; kek: string }) => ({
      key: row.key, oldKek: row.kek, newKek: row.kek, oldBlob: row.blob, newBlob: row.blob,
    }));
    bench.add(`COPY flush (${flushRows} rows)`, async () => {
      const result = await writer.flush({ rewrapped: unchanged, quarantined: [], scanned: 0, checkpoint: null });
      if (result.updated !== flushRows) throw new Error(`flush updated ${result.updated} of ${flushRows} rows`);
    });

    await bench.run();
    const rowsPerOp = (name: string) => (name.startsWith('rewrap') ? batchRows : name.startsWith('COPY') ? flushRows : pageRows);
    const report = bench.tasks.map((task) => {
      const result = task.result as { latency?: { mean: number }; throughput?: { mean: number } };
      const meanMs = result.latency?.mean ?? NaN;
      return { stage: task.name, meanMs: Number(meanMs.toFixed(2)), rowsPerSecond: Math.round((rowsPerOp(task.name) * 1000) / meanMs) };
    });
    if (values.json === true) console.log(JSON.stringify({ date: new Date().toISOString(), stages: report }));
    else console.table(report);

    writer.close();
    for (const transport of transports) await transport.destroy();
  } finally {
    await pool.end();
    await client.end();
    kms.destroy();
    await emulator.close();
    await database.close();
  }
}

main().catch((error: unknown) => {
  console.error('stage benchmark failed:', error);
  process.exitCode = 1;
});
