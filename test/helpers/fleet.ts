import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

export interface CliProcess {
  child: ChildProcess;
  /** Resolves with the exit code, or the signal name when the process was killed. */
  exited: Promise<number | string>;
  stdout(): string;
  stderr(): string;
  /** The pino lines on stderr, parsed. */
  events(): Array<Record<string, unknown>>;
}

/** Runs `rewrap ARGS` from the TypeScript sources in a child process. */
export function runCli(args: string[], env: Record<string, string> = {}): CliProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: root,
    env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (err += chunk.toString('utf8')));
  const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')));
  return {
    child,
    exited,
    stdout: () => out,
    stderr: () => err,
    events: () =>
      err
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}

/** Seconds of the emulator's per-second history that fall at or after `sinceMs`, with some traffic. */
export async function busySeconds(emulatorUrl: string, sinceMs: number): Promise<Array<{ second: number; accepted: number; throttled: number }>> {
  const response = await fetch(new URL('/_emulator/stats', emulatorUrl));
  const stats = (await response.json()) as { perSecond: Array<{ second: number; accepted: number; throttled: number }> };
  return stats.perSecond.filter((entry) => entry.second >= Math.floor(sinceMs / 1000) && entry.accepted + entry.throttled > 0);
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
