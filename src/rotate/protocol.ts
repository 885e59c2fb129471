/**
 * Plain data exchanged between the main thread and the rewrap workers.
 * Errors never cross the thread boundary as objects: each row comes back
 * with either a new blob or an error name.
 */

import type { KmsTransportName } from '../kms/transport/types.js';

export type KmsMode = 'reencrypt' | 'decrypt-encrypt';

export interface WorkerConfig {
  endpoint?: string | undefined;
  region?: string | undefined;
  /** Sockets each worker may open; sized to the requests it keeps in flight. */
  maxSockets: number;
  requestTimeoutMs: number;
  mode: KmsMode;
  /** KMS client implementation; unset means the default transport. */
  transport?: KmsTransportName | undefined;
  /**
   * Testing only: probability per task that the worker throws, or exits its
   * thread, before sending any request. Used to prove that such batches are
   * requeued and nothing hangs.
   */
  faultInjection?: { throwRate?: number; exitRate?: number } | undefined;
}

export interface RewrapTaskRow {
  blob: Uint8Array;
  sourceKek: string;
  matter: string;
  token: string;
}

export interface RewrapTask {
  /** Target key ARN. */
  target: string;
  rows: RewrapTaskRow[];
}

export interface RewrapTaskResult {
  /** New blob per row, or null when the row failed. */
  blobs: Array<Uint8Array | null>;
  /** AWS error name per failed row (`name` of the SDK error), null on success. */
  errors: Array<string | null>;
  /** HTTP status of each failed row's response, when there was one. */
  statuses: Array<number | null>;
  /** Key ARN that wrapped the new blobs, as the KMS returned it. */
  keyId: string | null;
  /** KMS requests this task sent. */
  requests: number;
  /** Thread that ran the task, so that a warm-up can tell when every worker is loaded. */
  threadId: number;
}
