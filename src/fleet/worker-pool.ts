import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { KmsMode, WorkerConfig } from '../rotate/protocol.js';

export interface WorkerPoolOptions {
  workers: number;
  /** Rewrap tasks each worker runs at once. */
  tasksPerWorker: number;
  /** Rows per task, for sizing the KMS client's sockets. */
  rowsPerTask: number;
  kmsEndpoint?: string | undefined;
  kmsRegion?: string | undefined;
  kmsRequestTimeoutMs?: number | undefined;
  mode: KmsMode;
}

/** Starts the rewrap worker threads that every partition of a process shares. */
export function createWorkerPool(options: WorkerPoolOptions): Piscina {
  const requestsPerRow = options.mode === 'decrypt-encrypt' ? 2 : 1;
  const config: WorkerConfig = {
    endpoint: options.kmsEndpoint,
    region: options.kmsRegion,
    maxSockets: options.tasksPerWorker * options.rowsPerTask * requestsPerRow,
    requestTimeoutMs: options.kmsRequestTimeoutMs ?? 15_000,
    mode: options.mode,
  };
  // Under a TypeScript loader (tests, tsx) the worker is the .ts source and
  // needs the same loader; a built install runs the compiled .js file.
  const typescript = import.meta.url.endsWith('.ts');
  return new Piscina({
    filename: fileURLToPath(new URL(typescript ? '../rotate/worker.ts' : '../rotate/worker.js', import.meta.url)),
    execArgv: typescript ? ['--import', 'tsx'] : [],
    workerData: config,
    env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
    minThreads: options.workers,
    maxThreads: options.workers,
    concurrentTasksPerWorker: options.tasksPerWorker,
    idleTimeout: 60_000,
  });
}
