import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CloudTrailClient, LookupEventsCommand, type Event, type LookupEventsCommandInput } from '@aws-sdk/client-cloudtrail';
import { CreateKeyCommand, DecryptCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { CloudTrailEventSource } from '../src/lifecycle/cloudtrail.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { runCli } from './helpers/cli.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

let kms: TestKms;
let cloudTrail: CloudTrailClient;
let busyKey: string;
let quietKey: string;
/** Times around the second batch of Encrypt calls under busyKey. */
let batchStart: Date;
let batchEnd: Date;
const batchSize = 7;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function createKey(): Promise<string> {
  return (await kms.client.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
}

async function encrypt(keyArn: string, token: string): Promise<Uint8Array> {
  const output = await kms.client.send(
    new EncryptCommand({ KeyId: keyArn, Plaintext: Buffer.alloc(32, 7), EncryptionContext: { matter: 'm1', token } }),
  );
  return output.CiphertextBlob!;
}

/** Reads every page of one lookup through the SDK. */
async function lookupAll(input: LookupEventsCommandInput): Promise<{ events: Event[]; pages: number; firstPage: number }> {
  const events: Event[] = [];
  let pages = 0;
  let firstPage = 0;
  let token: string | undefined;
  do {
    const output = await cloudTrail.send(new LookupEventsCommand({ ...input, NextToken: token }));
    if (pages === 0) firstPage = output.Events?.length ?? 0;
    pages += 1;
    events.push(...(output.Events ?? []));
    token = output.NextToken;
  } while (token !== undefined);
  return { events, pages, firstPage };
}

function logged(keyArn: string) {
  return kms.emulator.requestLog().filter((event) => event.resources.some((resource) => resource.ARN === keyArn));
}

const byResource = (keyArn: string): LookupEventsCommandInput => ({ LookupAttributes: [{ AttributeKey: 'ResourceName', AttributeValue: keyArn }] });

beforeAll(async () => {
  kms = await startTestKms({ lookupEventsRate: Infinity });
  cloudTrail = new CloudTrailClient({
    endpoint: kms.emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDTESTADMIN', secretAccessKey: 'test' },
    maxAttempts: 1,
  });
  busyKey = await createKey();
  quietKey = await createKey();
  for (let i = 0; i < 60; i += 1) await encrypt(busyKey, `t${i}`);
  await encrypt(quietKey, 'quiet');
  await sleep(20);
  batchStart = new Date();
  for (let i = 0; i < batchSize; i += 1) await encrypt(busyKey, `batch${i}`);
  batchEnd = new Date();
  await sleep(20);
  await encrypt(busyKey, 'after');
});

afterAll(async () => {
  cloudTrail?.destroy();
  await kms?.close();
});

describe('emulator LookupEvents', () => {
  it('pages past 50 events', async () => {
    const { events, pages, firstPage } = await lookupAll(byResource(busyKey));
    expect(firstPage).toBe(50);
    expect(pages).toBe(2);
    expect(events.length).toBe(logged(busyKey).length);
    expect(new Set(events.map((event) => event.EventId)).size).toBe(events.length);
  });

  it('returns newest first', async () => {
    const { events } = await lookupAll(byResource(busyKey));
    const times = events.map((event) => event.EventTime!.getTime());
    expect(times).toEqual([...times].sort((a, b) => b - a));
  });

  it('filters by resource', async () => {
    const { events } = await lookupAll(byResource(quietKey));
    const names = events.map((event) => event.Resources?.map((resource) => resource.ResourceName));
    expect(events.length).toBe(logged(quietKey).length);
    expect(names.every((resources) => resources?.includes(quietKey))).toBe(true);
    expect(names.some((resources) => resources?.includes(busyKey))).toBe(false);
  });

  it('filters by time window', async () => {
    const { events } = await lookupAll({ ...byResource(busyKey), StartTime: batchStart, EndTime: batchEnd });
    const tokens = events.map((event) => (JSON.parse(event.CloudTrailEvent!) as { requestParameters: { encryptionContext: { token: string } } }).requestParameters.encryptionContext.token);
    expect(tokens.sort()).toEqual(Array.from({ length: batchSize }, (_, i) => `batch${i}`).sort());
  });

  it('filters by event source', async () => {
    const { events } = await lookupAll({ LookupAttributes: [{ AttributeKey: 'EventSource', AttributeValue: 'kms.amazonaws.com' }], MaxResults: 50 });
    expect(events.length).toBe(kms.emulator.requestLog().length);
  });

  it('sends the stored event as JSON', async () => {
    const output = await cloudTrail.send(new LookupEventsCommand({ ...byResource(busyKey), MaxResults: 1 }));
    const event = output.Events![0]!;
    const record = JSON.parse(event.CloudTrailEvent!) as { eventID: string; eventName: string; userIdentity: { accessKeyId: string } };
    expect(record.eventID).toBe(event.EventId);
    expect(record.eventName).toBe('Encrypt');
    expect(record.userIdentity.accessKeyId).toBe('AKIDTESTADMIN');
    expect(event.Username).toBe('AKIDTESTADMIN');
    expect(event.ReadOnly).toBe('true');
    expect(event.EventSource).toBe('kms.amazonaws.com');
  });

  it('rejects a token for other parameters', async () => {
    const first = await cloudTrail.send(new LookupEventsCommand(byResource(busyKey)));
    const error = await cloudTrail.send(new LookupEventsCommand({ ...byResource(quietKey), NextToken: first.NextToken })).catch((caught: unknown) => caught);
    expect((error as Error).name).toBe('InvalidNextTokenException');
  });

  it('rejects two lookup attributes', async () => {
    const attributes = [...byResource(busyKey).LookupAttributes!, { AttributeKey: 'EventName' as const, AttributeValue: 'Encrypt' }];
    const error = await cloudTrail.send(new LookupEventsCommand({ LookupAttributes: attributes })).catch((caught: unknown) => caught);
    expect((error as Error).name).toBe('InvalidLookupAttributesException');
  });

  it('rejects MaxResults over 50', async () => {
    const error = await cloudTrail.send(new LookupEventsCommand({ MaxResults: 51 })).catch((caught: unknown) => caught);
    expect((error as Error).name).toBe('InvalidMaxResultsException');
  });

  it('rejects an inverted time range', async () => {
    const error = await cloudTrail.send(new LookupEventsCommand({ StartTime: batchEnd, EndTime: batchStart })).catch((caught: unknown) => caught);
    expect((error as Error).name).toBe('InvalidTimeRangeException');
  });
});

describe('CloudTrail event source', () => {
  it('reads every page of a key', async () => {
    const log = captureLogger();
    const source = new CloudTrailEventSource({ client: cloudTrail, logger: log.logger, requestsPerSecond: 100 });
    const events = await source.events(busyKey, new Date(0), new Date(Date.now() + 1000));
    expect(events.length).toBe(logged(busyKey).length);
    expect(log.lines().some((line) => line.event === 'cloudtrail.lookup.done' && line.pages === 2)).toBe(true);
  });

  it('ends the window before until', async () => {
    const log = captureLogger();
    const source = new CloudTrailEventSource({ client: cloudTrail, logger: log.logger, requestsPerSecond: 100 });
    const events = await source.events(busyKey, batchStart, batchEnd);
    const inside = logged(busyKey).filter((event) => Date.parse(event.eventTime) >= batchStart.getTime() && Date.parse(event.eventTime) < batchEnd.getTime());
    expect(events.length).toBe(inside.length);
  });

  it('retries throttled pages', async () => {
    const limited = await startTestKms({ lookupEventsRate: 1 });
    const client = new CloudTrailClient({ endpoint: limited.emulator.url, region: 'us-east-1', credentials: { accessKeyId: 'AKIDTESTADMIN', secretAccessKey: 'test' }, maxAttempts: 1 });
    try {
      const key = (await limited.client.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
      for (let i = 0; i < 55; i += 1) await limited.client.send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.alloc(32, 1) }));
      const log = captureLogger();
      const source = new CloudTrailEventSource({ client, logger: log.logger, requestsPerSecond: 100, retryBaseMs: 200 });
      const events = await source.events(key, new Date(0), new Date(Date.now() + 1000));
      expect(events.length).toBe(56);
      expect(log.lines().some((line) => line.event === 'cloudtrail.lookup.retry')).toBe(true);
    } finally {
      client.destroy();
      await limited.close();
    }
  });

  it('gives up after max attempts', async () => {
    kms.emulator.configure({ faults: { LookupEvents: { errorRate: 1, errorName: 'ThrottlingException', errorStatus: 400 } } });
    const log = captureLogger();
    const source = new CloudTrailEventSource({ client: cloudTrail, logger: log.logger, requestsPerSecond: 100, maxAttempts: 3, retryBaseMs: 1 });
    const error = await source.events(busyKey, new Date(0), new Date()).catch((caught: unknown) => caught);
    kms.emulator.configure({ faults: {} });
    expect((error as Error).message).toMatch(/throttled 3 times/);
    expect(log.lines().filter((line) => line.event === 'cloudtrail.lookup.retry').length).toBe(2);
  });

  it('raises other errors at once', async () => {
    kms.emulator.configure({ faults: { LookupEvents: { errorRate: 1, errorName: 'AccessDeniedException', errorStatus: 400 } } });
    const log = captureLogger();
    const source = new CloudTrailEventSource({ client: cloudTrail, logger: log.logger, requestsPerSecond: 100 });
    const error = await source.events(busyKey, new Date(0), new Date()).catch((caught: unknown) => caught);
    kms.emulator.configure({ faults: {} });
    expect((error as Error).name).toBe('AccessDeniedException');
    expect(log.lines().filter((line) => line.event === 'cloudtrail.lookup.retry').length).toBe(0);
  });
});

describe('exposure command', () => {
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await db?.drop();
  });

  it('reports decrypts read from CloudTrail', async () => {
    const since = new Date(Date.now() - 1000);
    const blob = await encrypt(quietKey, 'read-twice');
    for (let i = 0; i < 2; i += 1) {
      await kms.client.send(new DecryptCommand({ CiphertextBlob: blob, KeyId: quietKey, EncryptionContext: { matter: 'm1', token: 'read-twice' } }));
    }
    const result = await runCli(['exposure', '--kek', quietKey, '--since', since.toISOString(), '--kms-endpoint', kms.emulator.url, '--format', 'json'], {
      DATABASE_URL: db.url,
    });
    const report = JSON.parse(result.stdout) as { exposures: Array<{ matter: string; token: string; principal: string; count: number }> };
    expect(result.code).toBe(0);
    expect(report.exposures).toEqual([expect.objectContaining({ matter: 'm1', token: 'read-twice', principal: 'AKIDTESTADMIN', count: 2 })]);
  });
});
