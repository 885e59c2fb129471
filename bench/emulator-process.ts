import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { EmulatorStats } from '../src/kms/emulator/index.js';

export interface EmulatorProcess {
  url: string;
  stats(): Promise<EmulatorStats>;
  resetStats(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts `rewrap kms-emulator` in a child process, so its CPU is not counted against the rotating process. */
export async function spawnEmulator(quota: number, latencyMs: number): Promise<EmulatorProcess> {
  const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  const child: ChildProcess = spawn(
    process.execPath,
    [cli, 'kms-emulator', '--port', '0', '--quota', String(quota), '--latency-ms', String(latencyMs)],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, REWRAP_LOG_LEVEL: 'warn' } },
  );
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    lines.once('line', (line) => resolve(line.trim()));
    child.once('exit', (code) => reject(new Error(`KMS emulator exited with status ${code} before printing its URL`)));
  });
  if (!url.startsWith('http://')) throw new Error(`KMS emulator printed "${url}" instead of its URL`);
  return {
    url,
    async stats() {
      const response = await fetch(new URL('/_emulator/stats', url));
      return (await response.json()) as EmulatorStats;
    },
    async resetStats() {
      await fetch(new URL('/_emulator/stats/reset', url), { method: 'POST' });
    },
    async stop() {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}
