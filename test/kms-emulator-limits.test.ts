import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { CreateAliasCommand, CreateKeyCommand, DecryptCommand, DescribeKeyCommand, EncryptCommand, KMSClient } from '@aws-sdk/client-kms';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { type EmulatorOptions, type RunningEmulator, startEmulator } from '../src/kms/emulator/index.js';

function clientFor(emulator: RunningEmulator): KMSClient {
  return new KMSClient({
    endpoint: emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDTEST', secretAccessKey: 'test' },
    maxAttempts: 1,
  });
}

type CallError = { name: string; code?: string; $metadata?: { httpStatusCode?: number } };

async function failureOf(call: Promise<unknown>): Promise<CallError | undefined> {
  return (await call.then(
    () => undefined,
    (caught: unknown) => caught,
  )) as CallError | undefined;
}

/** Waits until the current wall-clock second is at most 100 ms old, so a burst stays inside one quota window. */
async function waitForSecondStart(): Promise<void> {
  const intoSecond = Date.now() % 1000;
  if (intoSecond > 100) await new Promise((resolve) => setTimeout(resolve, 1000 - intoSecond + 5));
}

const running: RunningEmulator[] = [];
const clients: KMSClient[] = [];
let directory: string;

async function start(options: EmulatorOptions = {}): Promise<{ emulator: RunningEmulator; kms: KMSClient; keyId: string }> {
  const emulator = await startEmulator(options);
  const kms = clientFor(emulator);
  running.push(emulator);
  clients.push(kms);
  const created = await kms.send(new CreateKeyCommand({}));
  return { emulator, kms, keyId: created.KeyMetadata?.KeyId as string };
}

beforeEach(async () => {
  directory = await mkdtemp(join(tmpdir(), 'kms-emulator-'));
});

afterEach(async () => {
  for (const client of clients.splice(0)) client.destroy();
  for (const emulator of running.splice(0)) await emulator.close();
  await rm(directory, { recursive: true, force: true });
});

describe('quota', () => {
  it('throttles past the per-second quota', async () => {
    const { emulator, kms, keyId } = await start({ quota: 20 });
    await waitForSecondStart();

    const calls = Array.from({ length: 60 }, () => failureOf(kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') }))));
    const failures = (await Promise.all(calls)).filter((failure) => failure !== undefined);
    const stats = emulator.stats();

    expect(failures.length).toBeGreaterThanOrEqual(20);
    expect(failures.every((failure) => failure.name === 'ThrottlingException')).toBe(true);
    expect(failures[0]?.$metadata?.httpStatusCode).toBe(400);
    expect(stats.throttled).toBe(failures.length);
    expect(stats.maxPerSecond).toBeLessThanOrEqual(20);
    expect(stats.requests.Encrypt).toBe(60);
    expect(stats.perSecond.reduce((sum, second) => sum + second.accepted, 0)).toBe(60 - failures.length);
  });

  it('does not count management operations', async () => {
    const { emulator, kms, keyId } = await start({ quota: 1 });
    await waitForSecondStart();

    for (let i = 0; i < 5; i++) await kms.send(new DescribeKeyCommand({ KeyId: keyId }));
    await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') }));

    expect(emulator.stats().throttled).toBe(0);
  });

  it('logs throttled requests with errorCode', async () => {
    const { emulator, kms, keyId } = await start({ quota: 1 });
    await waitForSecondStart();

    await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') }));
    const failure = await failureOf(kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x'), EncryptionContext: { row: '7' } })));

    expect(failure?.name).toBe('ThrottlingException');
    const last = emulator.requestLog().at(-1);
    expect(last?.errorCode).toBe('ThrottlingException');
    expect(last?.errorMessage).toBe('Rate exceeded');
    expect(last?.requestParameters?.encryptionContext).toEqual({ row: '7' });
  });

  it('stats endpoints report and reset', async () => {
    const { emulator, kms, keyId } = await start();
    await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') }));

    const stats = (await (await fetch(`${emulator.url}/_emulator/stats`)).json()) as { requests: Record<string, number>; maxPerSecond: number };
    expect(stats.requests.Encrypt).toBe(1);
    expect(stats.requests.CreateKey).toBe(1);
    expect(stats.maxPerSecond).toBe(1);

    const reset = await fetch(`${emulator.url}/_emulator/stats/reset`, { method: 'POST' });
    expect(reset.status).toBe(200);
    expect(emulator.stats().requests).toEqual({});
    expect(emulator.stats().perSecond).toEqual([]);
  });

  it('config endpoint changes the quota', async () => {
    const { emulator, kms, keyId } = await start();
    const response = await fetch(`${emulator.url}/_emulator/config`, { method: 'PUT', body: JSON.stringify({ quota: 1 }) });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { quota: number }).quota).toBe(1);
    await waitForSecondStart();

    await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') }));
    const failure = await failureOf(kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })));
    expect(failure?.name).toBe('ThrottlingException');

    const invalid = await fetch(`${emulator.url}/_emulator/config`, { method: 'PUT', body: JSON.stringify({ latencyMs: -1 }) });
    expect(invalid.status).toBe(400);
  });
});

describe('latency and faults', () => {
  it('latency delays the response', async () => {
    const { emulator, kms, keyId } = await start();
    emulator.configure({ latencyMs: 200 });

    const started = performance.now();
    await kms.send(new DescribeKeyCommand({ KeyId: keyId }));
    const elapsed = performance.now() - started;

    expect(elapsed).toBeGreaterThanOrEqual(195);
  });

  it('latency does not block other requests', async () => {
    const { emulator, kms, keyId } = await start();
    emulator.configure({ latencyMs: 300 });

    const started = performance.now();
    await Promise.all(Array.from({ length: 20 }, () => kms.send(new DescribeKeyCommand({ KeyId: keyId }))));
    const elapsed = performance.now() - started;

    expect(elapsed).toBeLessThan(1500);
  });

  it('error rate 1 gives KMSInternalException 500', async () => {
    const { emulator, kms, keyId } = await start({ faults: { Encrypt: { errorRate: 1 } } });

    const failure = await failureOf(kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })));
    expect(failure?.name).toBe('KMSInternalException');
    expect(failure?.$metadata?.httpStatusCode).toBe(500);

    const described = await kms.send(new DescribeKeyCommand({ KeyId: keyId }));
    expect(described.KeyMetadata?.KeyId).toBe(keyId);
    expect(emulator.stats().faults).toBe(1);
  });

  it('fault error name and status are configurable', async () => {
    const { emulator, kms, keyId } = await start();
    emulator.configure({ faults: { '*': { errorRate: 1, errorName: 'DependencyTimeoutException', errorStatus: 503 } } });

    const failure = await failureOf(kms.send(new DescribeKeyCommand({ KeyId: keyId })));
    expect(failure?.name).toBe('DependencyTimeoutException');
    expect(failure?.$metadata?.httpStatusCode).toBe(503);
  });

  it('faulted request counts against the quota', async () => {
    const { emulator, kms, keyId } = await start({ quota: 1, faults: { Encrypt: { errorRate: 1 } } });
    await waitForSecondStart();

    const first = await failureOf(kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })));
    const second = await failureOf(kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })));

    expect(first?.name).toBe('KMSInternalException');
    expect(second?.name).toBe('ThrottlingException');
    expect(emulator.stats().maxPerSecond).toBe(1);
  });

  it('reset rate 1 gives a network error', async () => {
    const { emulator, kms, keyId } = await start();
    emulator.configure({ faults: { Encrypt: { resetRate: 1 } } });

    const failure = await failureOf(kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })));
    expect(failure).toBeDefined();
    expect(failure?.$metadata?.httpStatusCode).toBeUndefined();
    expect(failure?.code).toBe('ECONNRESET');
  });

  it('stall delays then answers normally', async () => {
    const { emulator, kms, keyId } = await start({ faults: { Encrypt: { stallRate: 1, stallMs: 300 } } });

    const started = performance.now();
    const encrypted = await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') }));
    const elapsed = performance.now() - started;

    expect(encrypted.CiphertextBlob?.length).toBe(46);
    expect(elapsed).toBeGreaterThanOrEqual(295);
    expect(emulator.stats().faults).toBe(1);
  });
});

describe('persistence', () => {
  it('state file survives a restart', async () => {
    const statePath = join(directory, 'kms-state.json');
    const first = await start({ statePath });
    await first.kms.send(new CreateAliasCommand({ AliasName: 'alias/persisted', TargetKeyId: first.keyId }));
    const encrypted = await first.kms.send(new EncryptCommand({ KeyId: 'alias/persisted', Plaintext: Buffer.from('kept'), EncryptionContext: { a: 'b' } }));
    await first.emulator.close();

    const second = await startEmulator({ statePath });
    running.push(second);
    const kms = clientFor(second);
    clients.push(kms);

    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: encrypted.CiphertextBlob, EncryptionContext: { a: 'b' } }));
    expect(Buffer.from(decrypted.Plaintext as Uint8Array).toString()).toBe('kept');
    const described = await kms.send(new DescribeKeyCommand({ KeyId: 'alias/persisted' }));
    expect(described.KeyMetadata?.KeyId).toBe(first.keyId);
  });

  it('state file is written before the response', async () => {
    const statePath = join(directory, 'kms-state.json');
    const { keyId } = await start({ statePath });

    const state = JSON.parse(await readFile(statePath, 'utf8')) as { version: number; keys: Array<{ keyId: string }> };
    expect(state.version).toBe(1);
    expect(state.keys.map((key) => key.keyId)).toEqual([keyId]);
  });

  it('request log file gets JSON lines', async () => {
    const requestLogPath = join(directory, 'requests.jsonl');
    const { emulator, kms, keyId } = await start({ requestLogPath });
    await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x'), EncryptionContext: { row: '1' } }));
    await emulator.close();
    running.splice(running.indexOf(emulator), 1);

    const lines = (await readFile(requestLogPath, 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(2);
    const event = JSON.parse(lines[1] as string) as { eventName: string; requestParameters: { encryptionContext: unknown } };
    expect(event.eventName).toBe('Encrypt');
    expect(event.requestParameters.encryptionContext).toEqual({ row: '1' });
  });

  it('request log keeps the last requestLogLimit events', async () => {
    const { emulator, kms, keyId } = await start({ requestLogLimit: 3 });
    for (let i = 0; i < 5; i++) await kms.send(new DescribeKeyCommand({ KeyId: keyId }));

    const events = emulator.requestLog();
    expect(events).toHaveLength(3);
    expect(events.every((event) => event.eventName === 'DescribeKey')).toBe(true);
  });
});
