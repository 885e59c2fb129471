import { execFileSync, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';

/**
 * Runs the end-to-end benchmark at 100,000 rows against the emulator in its
 * own process, in a database of its own. The quota is one that a 2-core
 * host sustains with the emulator beside it; BENCH_SMOKE_QUOTA changes it,
 * and BENCH_SMOKE=0 skips the run (it takes about a minute).
 */
const quota = Number(process.env.BENCH_SMOKE_QUOTA ?? 2000);

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

describe.skipIf(process.env.BENCH_SMOKE === '0')('end-to-end benchmark', () => {
  it('holds 90% of the quota at 100k rows', { timeout: 240_000 }, () => {
    execFileSync('npx', ['tsc', '-p', '.'], { stdio: 'inherit' });
    const run = spawnSync(process.execPath, ['dist/bench/e2e.js', '--rows', '100000', '--kms-quota', String(quota), '--baseline-rows', '0', '--json'], {
      env: { ...process.env, DATABASE_URL: db.url },
      encoding: 'utf8',
      timeout: 220_000,
    });
    expect(run.status, run.stderr).toBe(0);
    const report = JSON.parse(run.stdout.trim().split('\n').pop()!) as Record<string, number | boolean>;
    expect(report.leftUnrotated).toBe(0);
    expect(report.rewrapped).toBe(100_000);
    expect(report.maxPerSecond).toBeLessThanOrEqual(quota);
    expect(report.quotaUtilization).toBeGreaterThanOrEqual(0.9);
  });
});
