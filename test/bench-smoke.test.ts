import { execFileSync, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { inject } from 'vitest';

/**
 * Runs the end-to-end benchmark at 100,000 rows against the emulator in its
 * own process. It takes about 90 seconds, so it runs only with BENCH_SMOKE=1
 * (the CI step sets it). The quota is one that a loaded 2-core host
 * sustains with the emulator beside it; raise it with BENCH_SMOKE_QUOTA.
 *
 * NOTE: at quota 1,500 on a 2-core VM the limiter delivered 84% of the
 * quota with the CPU mostly idle and nothing throttled, so this test fails
 * until the limiter's refill reaches its configured rate.
 */
const quota = Number(process.env.BENCH_SMOKE_QUOTA ?? 1500);

describe.runIf(process.env.BENCH_SMOKE === '1')('end-to-end benchmark', () => {
  it('holds 90% of the quota at 100k rows', { timeout: 240_000 }, () => {
    execFileSync('npx', ['tsc', '-p', '.'], { stdio: 'inherit' });
    const run = spawnSync(process.execPath, ['dist/bench/e2e.js', '--rows', '100000', '--kms-quota', String(quota), '--baseline-rows', '0', '--json'], {
      env: { ...process.env, DATABASE_URL: inject('adminDatabaseUrl') },
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
