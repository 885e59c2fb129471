import { threadId, workerData } from 'node:worker_threads';
import { rowContext } from '../envelope.js';
import { createKmsTransport, defaultKmsTransport, type KmsTransport } from '../kms/transport/index.js';
import type { RewrapTask, RewrapTaskResult, RewrapTaskRow, WorkerConfig } from './protocol.js';

const config = workerData as WorkerConfig;
let transport: KmsTransport | null = null;

function kms(): KmsTransport {
  transport ??= createKmsTransport(config.transport ?? defaultKmsTransport, {
    endpoint: config.endpoint,
    region: config.region,
    maxSockets: config.maxSockets,
    requestTimeoutMs: config.requestTimeoutMs,
  });
  return transport;
}

interface RowOutcome {
  blob: Uint8Array | null;
  keyId: string | null;
  error: string | null;
  status: number | null;
  requests: number;
}

function failure(error: unknown, requests: number): RowOutcome {
  const named = error as { name?: unknown; $metadata?: { httpStatusCode?: unknown }; code?: unknown };
  let name = typeof named.name === 'string' ? named.name : 'UnknownError';
  // Socket-level failures surface as plain Errors with a Node error code.
  if (name === 'Error' && typeof named.code === 'string') name = named.code;
  const status = typeof named.$metadata?.httpStatusCode === 'number' ? named.$metadata.httpStatusCode : null;
  return { blob: null, keyId: null, error: name, status, requests };
}

async function reencrypt(target: string, row: RewrapTaskRow): Promise<RowOutcome> {
  const context = rowContext(row.matter, row.token);
  try {
    const output = await kms().reEncrypt({
      CiphertextBlob: row.blob,
      SourceKeyId: row.sourceKek,
      SourceEncryptionContext: context,
      DestinationKeyId: target,
      DestinationEncryptionContext: context,
    });
    return { blob: output.CiphertextBlob, keyId: output.KeyId ?? null, error: null, status: null, requests: 1 };
  } catch (error) {
    return failure(error, 1);
  }
}

/** Unwraps and wraps again in two requests, for a KMS without ReEncrypt. The plaintext DEK is zeroed once wrapped. */
async function decryptEncrypt(target: string, row: RewrapTaskRow): Promise<RowOutcome> {
  const context = rowContext(row.matter, row.token);
  let plaintext: Uint8Array | undefined;
  try {
    const decrypted = await kms().decrypt({ CiphertextBlob: row.blob, KeyId: row.sourceKek, EncryptionContext: context });
    plaintext = decrypted.Plaintext;
  } catch (error) {
    return failure(error, 1);
  }
  try {
    const encrypted = await kms().encrypt({ KeyId: target, Plaintext: plaintext, EncryptionContext: context });
    return { blob: encrypted.CiphertextBlob, keyId: encrypted.KeyId ?? null, error: null, status: null, requests: 2 };
  } catch (error) {
    return failure(error, 2);
  } finally {
    plaintext.fill(0);
  }
}

/** Rewraps every row of the task concurrently and reports each row's outcome. */
export default async function rewrapBatch(task: RewrapTask): Promise<RewrapTaskResult> {
  // An empty task is the engine's warm-up probe.
  if (task.rows.length === 0) {
    return { blobs: [], errors: [], statuses: [], keyId: null, requests: 0, threadId };
  }
  const faults = config.faultInjection;
  if (faults !== undefined) {
    const draw = Math.random();
    if (draw < (faults.exitRate ?? 0)) process.exit(1);
    if (draw < (faults.exitRate ?? 0) + (faults.throwRate ?? 0)) throw new Error('injected worker fault');
  }
  const rewrapRow = config.mode === 'decrypt-encrypt' ? decryptEncrypt : reencrypt;
  const outcomes = await Promise.all(task.rows.map((row) => rewrapRow(task.target, row)));
  const result: RewrapTaskResult = { blobs: [], errors: [], statuses: [], keyId: null, requests: 0, threadId };
  for (const outcome of outcomes) {
    result.blobs.push(outcome.blob);
    result.errors.push(outcome.error);
    result.statuses.push(outcome.status);
    result.requests += outcome.requests;
    if (outcome.keyId !== null) result.keyId = outcome.keyId;
  }
  return result;
}
