import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classifyKmsError } from '../src/kms/client.js';
import { startEmulator, type RunningEmulator } from '../src/kms/emulator/index.js';
import { createKmsTransport, kmsTransportNames, type KmsTransport } from '../src/kms/transport/index.js';

let emulator: RunningEmulator;

beforeAll(async () => {
  emulator = await startEmulator({ quota: Infinity });
});

afterAll(async () => {
  await emulator.close();
});

const context = { matter: 'matter-0001', token: 'doc-1' };

/** Returns the error a call rejects with, failing the test when it resolves. */
async function rejection(call: Promise<unknown>): Promise<{ name: string; $metadata?: { httpStatusCode?: number } }> {
  try {
    await call;
  } catch (error) {
    return error as { name: string; $metadata?: { httpStatusCode?: number } };
  }
  throw new Error('expected the KMS call to fail');
}

describe.each(kmsTransportNames)('KMS transport %s', (name) => {
  let kms: KmsTransport;

  beforeAll(() => {
    kms = createKmsTransport(name, { endpoint: emulator.url, maxSockets: 8, requestTimeoutMs: 5_000 });
  });

  afterAll(async () => {
    emulator.configure({ quota: Infinity, faults: {} });
    await kms.destroy();
  });

  it('round trips Encrypt, ReEncrypt and Decrypt', async () => {
    const source = emulator.store.createKey();
    const target = emulator.store.createKey();
    const plaintext = Buffer.alloc(32, 7);
    const wrapped = await kms.encrypt({ KeyId: source.arn, Plaintext: plaintext, EncryptionContext: context });
    expect(wrapped.KeyId).toBe(source.arn);

    const rewrapped = await kms.reEncrypt({
      CiphertextBlob: wrapped.CiphertextBlob,
      SourceKeyId: source.arn,
      SourceEncryptionContext: context,
      DestinationKeyId: target.arn,
      DestinationEncryptionContext: context,
    });
    expect(rewrapped.KeyId).toBe(target.arn);

    const unwrapped = await kms.decrypt({ CiphertextBlob: rewrapped.CiphertextBlob, KeyId: target.arn, EncryptionContext: context });
    expect(Buffer.from(unwrapped.Plaintext).equals(plaintext)).toBe(true);
    expect(unwrapped.KeyId).toBe(target.arn);
  });

  it('reports InvalidCiphertextException with status 400', async () => {
    const key = emulator.store.createKey();
    const wrapped = await kms.encrypt({ KeyId: key.arn, Plaintext: Buffer.alloc(32, 1), EncryptionContext: context });
    const error = await rejection(kms.decrypt({ CiphertextBlob: wrapped.CiphertextBlob, EncryptionContext: { ...context, token: 'doc-2' } }));
    expect(error.name).toBe('InvalidCiphertextException');
    expect(error.$metadata?.httpStatusCode).toBe(400);
    expect(classifyKmsError(error.name, error.$metadata?.httpStatusCode)).toBe('permanent');
  });

  it('reports IncorrectKeyException for another key', async () => {
    const key = emulator.store.createKey();
    const other = emulator.store.createKey();
    const wrapped = await kms.encrypt({ KeyId: key.arn, Plaintext: Buffer.alloc(32, 2), EncryptionContext: context });
    const error = await rejection(kms.decrypt({ CiphertextBlob: wrapped.CiphertextBlob, KeyId: other.arn, EncryptionContext: context }));
    expect(error.name).toBe('IncorrectKeyException');
    expect(error.$metadata?.httpStatusCode).toBe(400);
  });

  it('reports DisabledException for a disabled key', async () => {
    const key = emulator.store.createKey();
    emulator.store.disableKey(key.arn);
    const error = await rejection(kms.encrypt({ KeyId: key.arn, Plaintext: Buffer.alloc(32, 3), EncryptionContext: context }));
    expect(error.name).toBe('DisabledException');
    expect(error.$metadata?.httpStatusCode).toBe(400);
    expect(classifyKmsError(error.name, error.$metadata?.httpStatusCode)).toBe('key-state');
  });

  it('reports ThrottlingException with status 400', async () => {
    const key = emulator.store.createKey();
    emulator.configure({ quota: 1 });
    try {
      const calls = Array.from({ length: 5 }, () => kms.encrypt({ KeyId: key.arn, Plaintext: Buffer.alloc(32, 4), EncryptionContext: context }));
      const settled = await Promise.allSettled(calls);
      const failures = settled.filter((result) => result.status === 'rejected').map((result) => (result as PromiseRejectedResult).reason as { name: string; $metadata?: { httpStatusCode?: number } });
      expect(failures.length).toBeGreaterThan(0);
      expect(failures[0]!.name).toBe('ThrottlingException');
      expect(failures[0]!.$metadata?.httpStatusCode).toBe(400);
      expect(classifyKmsError(failures[0]!.name, failures[0]!.$metadata?.httpStatusCode)).toBe('throttled');
    } finally {
      emulator.configure({ quota: Infinity });
    }
  });

  it('reports a network reset as transient without status', async () => {
    const key = emulator.store.createKey();
    emulator.configure({ faults: { Encrypt: { resetRate: 1 } } });
    try {
      const error = await rejection(kms.encrypt({ KeyId: key.arn, Plaintext: Buffer.alloc(32, 5), EncryptionContext: context }));
      expect(error.name).toBe('TimeoutError');
      expect(error.$metadata?.httpStatusCode).toBeUndefined();
      expect(classifyKmsError(error.name, error.$metadata?.httpStatusCode)).toBe('transient');
    } finally {
      emulator.configure({ faults: {} });
    }
  });
});
