/**
 * End-to-end benchmark: seeds a vault, starts the KMS emulator in its own
 * process, rotates every seeded row under the quota, and reports rate, quota
 * utilization, CPU per rewrap and peak RSS, with an SVG of the accepted
 * requests per second. Two naive baselines rotate a small sample for the
 * ratios. Uses DATABASE_URL, or an embedded PostgreSQL when it is unset.
 *
 *   npm run bench -- --rows 1000000 --kms-quota Q [--latency-ms MS] [--emulator-quota Q] [--transport T] [--workers N] [--json]
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { CreateKeyCommand, DecryptCommand, EncryptCommand, ReEncryptCommand, type KMSClient } from '@aws-sdk/client-kms';
import pg from 'pg';
import { databaseFromEnvironment } from '../src/db/embedded.js';
import { initSchema } from '../src/db/schema.js';
import { rowContext } from '../src/envelope.js';
import { createKmsClient } from '../src/kms/client.js';
import { defaultKmsTransport, parseKmsTransportName } from '../src/kms/transport/index.js';
import { createLogger } from '../src/log.js';
import { rotate } from '../src/rotate/engine.js';
import { seedVault } from '../src/seed.js';
import { spawnEmulator, type EmulatorProcess } from './emulator-process.js';
import { rateChartSvg } from './svg.js';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '100000' },
    'kms-quota': { type: 'string', default: '3000' },
    'latency-ms': { type: 'string', default: '0' },
    'emulator-quota': { type: 'string' },
    matters: { type: 'string', default: '10' },
    transport: { type: 'string', default: defaultKmsTransport },
    workers: { type: 'string' },
    'baseline-rows': { type: 'string', default: '2000' },
    out: { type: 'string', default: 'bench/out' },
    json: { type: 'boolean', default: false },
  },
});

const rows = positiveInteger(values.rows, '--rows');
const quota = positiveInteger(values['kms-quota'], '--kms-quota');
const latencyMs = Number(values['latency-ms']);
// The KMS's real quota; below --kms-quota it makes the engine find the rate by throttling.
const emulatorQuota = values['emulator-quota'] === undefined ? quota : positiveInteger(values['emulator-quota'], '--emulator-quota');
const matters = positiveInteger(values.matters, '--matters');
const baselineRows = Number(values['baseline-rows']);
const transport = parseKmsTransportName(values.transport);
const workers = values.workers === undefined ? undefined : positiveInteger(values.workers, '--workers');

function positiveInteger(text: string, flag: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`invalid ${flag} "${text}": expected a positive integer`);
  return value;
}

const log = (line: string) => {
  if (values.json) console.error(line);
  else console.log(line);
};

async function createKey(kms: KMSClient): Promise<string> {
  const output = await kms.send(new CreateKeyCommand({ Description: 'rewrap benchmark target' }));
  return output.KeyMetadata!.Arn!;
}

interface SeededScope {
  matterIds: string[];
  rows: number;
}

async function seed(client: pg.Client, kms: KMSClient, emulator: EmulatorProcess, count: number, matterCount: number, prefix: string): Promise<SeededScope> {
  const seeded = await seedVault({ client, kms, emulatorUrl: emulator.url, matters: matterCount, rows: count, matterPrefix: prefix });
  return { matterIds: [...seeded.keks.keys()], rows: seeded.rows };
}

async function rowsLeft(client: pg.Client, scope: SeededScope, target: string): Promise<number> {
  const result = await client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault WHERE matter_id = ANY($1::text[]) AND kek_id <> $2', [
    scope.matterIds,
    target,
  ]);
  return Number(result.rows[0]!.n);
}

interface BaselineRow {
  id: string;
  matter_id: string;
  token: string;
  wrapped_key: Buffer;
  kek_id: string;
}

async function loadRows(client: pg.Client, scope: SeededScope): Promise<BaselineRow[]> {
  const result = await client.query<BaselineRow>(
    'SELECT id::text, matter_id, token, wrapped_key, kek_id FROM vault WHERE matter_id = ANY($1::text[]) ORDER BY id',
    [scope.matterIds],
  );
  return result.rows;
}

/** The loop from the SDK's envelope-encryption examples: per row Decrypt, Encrypt and one UPDATE, one row at a time. */
async function seedStyleLoop(client: pg.Client, kms: KMSClient, scope: SeededScope, target: string): Promise<number> {
  const started = performance.now();
  for (const row of await loadRows(client, scope)) {
    const context = rowContext(row.matter_id, row.token);
    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: row.wrapped_key, KeyId: row.kek_id, EncryptionContext: context }));
    const plaintext = decrypted.Plaintext!;
    try {
      const encrypted = await kms.send(new EncryptCommand({ KeyId: target, Plaintext: plaintext, EncryptionContext: context }));
      await client.query('UPDATE vault SET wrapped_key = $2, kek_id = $3 WHERE id = $1', [row.id, encrypted.CiphertextBlob, target]);
    } finally {
      plaintext.fill(0);
    }
  }
  return (performance.now() - started) / 1000;
}

/** 64 concurrent lanes over the stock SDK: per row one ReEncrypt and one UPDATE. */
async function promisePool(databaseUrl: string, kms: KMSClient, client: pg.Client, scope: SeededScope, target: string): Promise<number> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 8 });
  const all = await loadRows(client, scope);
  const started = performance.now();
  let next = 0;
  const lane = async () => {
    while (next < all.length) {
      const row = all[next++]!;
      const context = rowContext(row.matter_id, row.token);
      const output = await kms.send(
        new ReEncryptCommand({
          CiphertextBlob: row.wrapped_key,
          SourceKeyId: row.kek_id,
          SourceEncryptionContext: context,
          DestinationKeyId: target,
          DestinationEncryptionContext: context,
        }),
      );
      await pool.query('UPDATE vault SET wrapped_key = $2, kek_id = $3 WHERE id = $1', [row.id, output.CiphertextBlob, target]);
    }
  };
  await Promise.all(Array.from({ length: 64 }, lane));
  const seconds = (performance.now() - started) / 1000;
  await pool.end();
  return seconds;
}

async function main(): Promise<void> {
  const database = await databaseFromEnvironment();
  const databaseUrl = database.url;
  const emulator = await spawnEmulator(emulatorQuota, latencyMs);
  const kms = createKmsClient({ endpoint: emulator.url, maxSockets: 64 });
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const logger = createLogger('rewrap-bench', process.env.REWRAP_LOG_LEVEL ?? 'warn');
  try {
    await initSchema(client);
    const tag = randomBytes(3).toString('hex');

    log(`seeding ${rows} rows over ${matters} matters (emulator ${emulator.url}, quota ${quota}/s, latency ${latencyMs} ms) ...`);
    let phase = performance.now();
    const scope = await seed(client, kms, emulator, rows, matters, `bench-${tag}-`);
    const seedSeconds = (performance.now() - phase) / 1000;
    const target = await createKey(kms);
    await client.query('ANALYZE vault');

    log(`rotating with transport ${transport} ...`);
    await emulator.resetStats();
    let peakRss = process.memoryUsage().rss;
    const sampler = setInterval(() => {
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
    }, 100);
    const cpuBefore = process.cpuUsage();
    phase = performance.now();
    const summary = await rotate({ databaseUrl, matters: scope.matterIds, target, kmsEndpoint: emulator.url, quota, kmsTransport: transport, workers, logger });
    const rotateSeconds = (performance.now() - phase) / 1000;
    const cpu = process.cpuUsage(cpuBefore);
    clearInterval(sampler);
    const stats = await emulator.stats();

    phase = performance.now();
    const left = await rowsLeft(client, scope, target);
    const verifySeconds = (performance.now() - phase) / 1000;

    // The first and last seconds are partly idle, so utilization counts only the full seconds between them.
    const perSecond = stats.perSecond.filter((s) => s.accepted + s.throttled > 0);
    const interior = perSecond.length > 2 ? perSecond.slice(1, -1) : perSecond;
    const interiorAccepted = interior.reduce((sum, s) => sum + s.accepted, 0);
    const quotaUtilization = interior.length === 0 ? 0 : interiorAccepted / (emulatorQuota * interior.length);
    const cpuMicros = cpu.user + cpu.system;

    let baselines: Record<string, unknown> | null = null;
    if (baselineRows > 0) {
      log(`baselines on ${baselineRows} rows each ...`);
      const loopScope = await seed(client, kms, emulator, baselineRows, 2, `loop-${tag}-`);
      const poolScope = await seed(client, kms, emulator, baselineRows, 2, `pool-${tag}-`);
      const engineScope = await seed(client, kms, emulator, baselineRows, 2, `eng-${tag}-`);
      const loopSeconds = await seedStyleLoop(client, kms, loopScope, target);
      const stockKms = createKmsClient({ endpoint: emulator.url, maxSockets: 64 });
      const poolSeconds = await promisePool(databaseUrl, stockKms, client, poolScope, target);
      stockKms.destroy();
      const engineSample = await rotate({ databaseUrl, matters: engineScope.matterIds, target, kmsEndpoint: emulator.url, quota, kmsTransport: transport, logger });
      const loopRate = baselineRows / loopSeconds;
      const poolRate = baselineRows / poolSeconds;
      baselines = {
        rows: baselineRows,
        seedStyleLoopRate: Math.round(loopRate),
        promisePool64Rate: Math.round(poolRate),
        engineSampleRate: engineSample.rate,
        engineFullRate: summary.rate,
        engineOverSeedStyleLoop: round(summary.rate / loopRate, 1),
        engineOverPromisePool64: round(summary.rate / poolRate, 2),
        leftUnrotated: (await rowsLeft(client, loopScope, target)) + (await rowsLeft(client, poolScope, target)) + (await rowsLeft(client, engineScope, target)),
      };
    }

    const report = {
      date: new Date().toISOString(),
      machine: { cpus: availableParallelism(), model: cpus()[0]?.model ?? 'unknown', node: process.version },
      rows,
      quota,
      emulatorQuota,
      latencyMs,
      transport,
      status: summary.status,
      rewrapped: summary.rewrapped,
      leftUnrotated: left,
      seconds: round(rotateSeconds, 2),
      rate: Math.round(summary.rewrapped / rotateSeconds),
      quotaUtilization: round(quotaUtilization, 4),
      busySeconds: interior.length,
      acceptedAtEmulator: stats.perSecond.reduce((sum, s) => sum + s.accepted, 0),
      maxPerSecond: stats.maxPerSecond,
      maxPerSecondWithinQuota: stats.maxPerSecond <= emulatorQuota,
      throttled: stats.throttled,
      throttledShare: round(stats.throttled / Math.max(1, stats.throttled + stats.perSecond.reduce((sum, s) => sum + s.accepted, 0)), 4),
      cpuMicrosPerRewrap: Math.round(cpuMicros / Math.max(1, summary.rewrapped)),
      cpuSeconds: round(cpuMicros / 1e6, 2),
      peakRssMb: Math.round(peakRss / 1048576),
      stages: { seedSeconds: round(seedSeconds, 2), rotateSeconds: round(rotateSeconds, 2), verifySeconds: round(verifySeconds, 2), engine: summary.stages },
      baselines,
      perSecond: stats.perSecond.map((s) => ({ second: s.second, accepted: s.accepted, throttled: s.throttled })),
    };

    await mkdir(values.out, { recursive: true });
    const base = `${values.out}/e2e-${rows}-q${quota}-${transport}`;
    await writeFile(`${base}.json`, JSON.stringify(report, null, 2) + '\n');
    await writeFile(`${base}.svg`, rateChartSvg(report.perSecond, quota, `rewrap: ${rows} rows, quota ${quota}/s, ${transport}`));

    if (values.json) {
      console.log(JSON.stringify({ ...report, perSecond: undefined }));
    } else {
      const { perSecond: _perSecond, ...shown } = report;
      console.log(JSON.stringify(shown, null, 2));
      console.log(`wrote ${base}.json and ${base}.svg`);
    }
    if (left > 0 || summary.status !== 'done') process.exitCode = 1;
  } finally {
    await client.end();
    kms.destroy();
    await emulator.stop();
    await database.close();
  }
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

main().catch((error: unknown) => {
  console.error('benchmark failed:', error);
  process.exitCode = 1;
});
