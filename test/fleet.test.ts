import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand } from '@aws-sdk/client-kms';
import { createJob, readJobStatus } from '../src/fleet/jobs.js';
import { seedVault } from '../src/seed.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { busySeconds, runCli, sleep, type CliProcess } from './helpers/fleet.js';
import { startTestKms, type TestKms } from './helpers/kms.js';

const quota = 600;
const redisUrl = process.env.REDIS_URL;
const skipReason = redisUrl === undefined ? ' (skipped: REDIS_URL is unset)' : '';
if (redisUrl === undefined) console.error('fleet tests that need Redis are skipped: set REDIS_URL, for example redis://127.0.0.1:6379');

let db: TestDatabase;
let kms: TestKms;

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms({ quota });
  await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 4, rows: 4_000 });
});

afterAll(async () => {
  await kms?.close();
  await db?.drop();
});

async function newKey(): Promise<string> {
  const output = await kms.client.send(new CreateKeyCommand({ Description: 'fleet rotation target' }));
  return output.KeyMetadata!.Arn!;
}

function startWorkers(jobId: string, count: number, redis: string | null, leaseSeconds = 2): CliProcess[] {
  const args = [
    'rotate',
    '--job',
    jobId,
    '--database-url',
    db.url,
    '--kms-endpoint',
    kms.emulator.url,
    '--kms-quota',
    String(quota),
    '--lease-seconds',
    String(leaseSeconds),
    '--workers',
    '1',
    ...(redis === null ? [] : ['--redis', redis]),
  ];
  return Array.from({ length: count }, () => runCli(args, { REWRAP_LOG_LEVEL: 'info' }));
}

async function waitForTraffic(sinceMs: number): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const seconds = await busySeconds(kms.emulator.url, sinceMs);
    if (seconds.some((entry) => entry.accepted > 0)) return;
    await sleep(100);
  }
  throw new Error('no KMS traffic within 30 seconds');
}

async function rowsOffTarget(target: string): Promise<number> {
  const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault WHERE kek_id IS DISTINCT FROM $1', [target]);
  return Number(rows[0]!.n);
}

async function vaultCount(): Promise<number> {
  const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM vault');
  return Number(rows[0]!.n);
}

describe('fleet', () => {
  it('job create covers the whole key space', async () => {
    const created = await createJob({ client: db.client, matters: null, target: 'alias/unused', partitions: 5 });
    expect(created.partitions.length).toBe(5);
    expect(created.partitions[0]!.startKey).toBe('-9223372036854775808');
    expect(created.partitions[4]!.endKey).toBe('9223372036854775807');
    for (let i = 1; i < created.partitions.length; i++) {
      expect(BigInt(created.partitions[i]!.startKey)).toBe(BigInt(created.partitions[i - 1]!.endKey) + 1n);
    }
    expect(created.partitions.reduce((sum, p) => sum + p.rows, 0)).toBe(4_000);
  });

  it.skipIf(redisUrl === undefined)(`three processes share the quota${skipReason}`, async () => {
    const target = await newKey();
    const { jobId } = await createJob({ client: db.client, matters: null, target, partitions: 12 });
    const since = Date.now();
    const workers = startWorkers(jobId, 3, redisUrl!);
    const codes = await Promise.all(workers.map((worker) => worker.exited));

    expect(codes, workers.map((worker) => worker.stderr().slice(-2_000)).join('\n')).toEqual([0, 0, 0]);
    expect(await rowsOffTarget(target)).toBe(0);
    const seconds = await busySeconds(kms.emulator.url, since);
    const trace = seconds.map((entry) => `${entry.accepted}+${entry.throttled}`).join(' ');
    const events = workers.flatMap((worker) => worker.events().filter((line) => String(line.event).startsWith('limiter')).map((line) => `${String(line.event)}@${String(line.time)}`));
    // Requests sent, throttled or not, must stay within the quota in every second.
    const peak = Math.max(...seconds.map((entry) => entry.accepted + entry.throttled));
    expect(peak, `sent per second (accepted+throttled): ${trace}; limiter events: ${events.join(', ')}`).toBeLessThanOrEqual(quota);
    // The first and last busy seconds are partial: the job starts and ends inside them.
    const inner = seconds.slice(1, -1);
    expect(inner.length).toBeGreaterThan(3);
    const average = inner.reduce((sum, entry) => sum + entry.accepted, 0) / inner.length;
    expect(average, `accepted per second: ${inner.map((entry) => entry.accepted).join(' ')}; throttled ${kms.emulator.stats().throttled}; limiter events ${workers.flatMap((worker) => worker.events().filter((line) => String(line.event).startsWith('limiter'))).length}`).toBeGreaterThanOrEqual(0.9 * quota);

    const status = await readJobStatus(db.client, jobId, 2_000);
    expect(status!.status).toBe('done');
    expect(status!.partitions.every((p) => p.status === 'done')).toBe(true);
  });

  it.skipIf(redisUrl === undefined)(`killed process partitions are taken over${skipReason}`, async () => {
    const target = await newKey();
    const before = await vaultCount();
    const { jobId } = await createJob({ client: db.client, matters: null, target, partitions: 9 });
    const since = Date.now();
    const workers = startWorkers(jobId, 3, redisUrl!);
    await waitForTraffic(since);
    // Kill the first process while it holds a partition with rows already rewrapped.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const { rows: held } = await db.client.query(
        `SELECT 1 FROM rewrap.fleet_partitions p
         JOIN rewrap.fleet_workers w ON w.job_id = p.job_id AND w.worker_id = p.owner
         WHERE p.job_id = $1 AND w.pid = $2 AND p.status = 'running' AND p.rewrapped > 0`,
        [jobId, workers[0]!.child.pid],
      );
      if (held.length > 0) break;
      if (Date.now() > deadline) throw new Error('the first process never held a partition with progress');
      await sleep(50);
    }
    workers[0]!.child.kill('SIGKILL');
    const codes = await Promise.all(workers.map((worker) => worker.exited));

    expect(codes[0]).toBe('SIGKILL');
    expect(codes.slice(1), workers.map((worker) => worker.stderr().slice(-2_000)).join('\n')).toEqual([0, 0]);
    const takeovers = workers.slice(1).flatMap((worker) => worker.events().filter((line) => line.event === 'fleet.partition.takeover'));
    expect(takeovers.length).toBeGreaterThan(0);
    expect(await vaultCount()).toBe(before);
    expect(await rowsOffTarget(target)).toBe(0);
    const { rows } = await db.client.query<{ n: string }>('SELECT count(*)::text AS n FROM rewrap.quarantine WHERE resolved_at IS NULL');
    expect(Number(rows[0]!.n)).toBe(0);
    const peak = Math.max(...(await busySeconds(kms.emulator.url, since)).map((entry) => entry.accepted));
    expect(peak).toBeLessThanOrEqual(quota);
  });

  it.skipIf(redisUrl === undefined)(`Redis restart mid-job stays under quota${skipReason}`, async () => {
    const port = 6390;
    const ownRedis = `redis://127.0.0.1:${port}`;
    execFileSync('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--daemonize', 'yes']);
    try {
      await sleep(300);
      const target = await newKey();
      const { jobId } = await createJob({ client: db.client, matters: null, target, partitions: 12 });
      const since = Date.now();
      const workers = startWorkers(jobId, 3, ownRedis);
      await waitForTraffic(since);
      await sleep(1_000);
      execFileSync('redis-cli', ['-p', String(port), 'shutdown', 'nosave']);
      // Longer than the 5 s a host waits on Redis before it falls back to its local share.
      await sleep(7_000);
      execFileSync('redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--daemonize', 'yes']);
      const codes = await Promise.all(workers.map((worker) => worker.exited));

      expect(codes, workers.map((worker) => worker.stderr().slice(-2_000)).join('\n')).toEqual([0, 0, 0]);
      expect(await rowsOffTarget(target)).toBe(0);
      const events = workers.flatMap((worker) => worker.events().map((line) => line.event));
      expect(events).toContain('limiter.fallback');
      const peak = Math.max(...(await busySeconds(kms.emulator.url, since)).map((entry) => entry.accepted));
      expect(peak).toBeLessThanOrEqual(quota);
    } finally {
      try {
        execFileSync('redis-cli', ['-p', String(port), 'shutdown', 'nosave']);
      } catch {
        // Already stopped.
      }
    }
  });
});
