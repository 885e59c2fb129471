import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { EmulatorOptions } from './server.js';
import type { EmulatorStats } from './stats.js';

/** An emulator running on a thread of its own, reached over loopback HTTP like any KMS. */
export interface ThreadedEmulator {
  url: string;
  stats(): Promise<EmulatorStats>;
  close(): Promise<void>;
}

/**
 * Starts the KMS emulator in a worker thread, so that in a single-process
 * demo or benchmark it does not share the event loop of the engine's main
 * thread. Only serialisable options (no functions) can be passed.
 */
export async function startEmulatorInThread(options: EmulatorOptions = {}): Promise<ThreadedEmulator> {
  const here = import.meta.url;
  const typescript = here.endsWith('.ts');
  const file = fileURLToPath(new URL(typescript ? './thread-main.ts' : './thread-main.js', here));
  const worker = new Worker(file, { workerData: options, execArgv: typescript ? ['--import', 'tsx'] : [] });
  const url = await new Promise<string>((resolve, reject) => {
    worker.once('message', (message: { url?: string; error?: string }) => {
      if (message.url !== undefined) resolve(message.url);
      else reject(new Error(`KMS emulator thread failed to start: ${message.error ?? 'no reason given'}`));
    });
    worker.once('error', reject);
  });
  return {
    url,
    async stats() {
      const response = await fetch(new URL('/_emulator/stats', url));
      return (await response.json()) as EmulatorStats;
    },
    async close() {
      const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      worker.postMessage('close');
      await exited;
    },
  };
}
