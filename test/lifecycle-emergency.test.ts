import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CloudTrailClient } from '@aws-sdk/client-cloudtrail';
import { DecryptCommand, DescribeKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { rowContext } from '../src/envelope.js';
import { EmulatorKeyAccess } from '../src/lifecycle/access.js';
import { kmsPrincipal, openLifecycleContext, type LifecycleContext } from '../src/lifecycle/context.js';
import { runEmergency, type EmergencyOptions } from '../src/lifecycle/emergency.js';
import { CloudTrailEventSource, createCloudTrailClient } from '../src/lifecycle/cloudtrail.js';
import { seedVault } from '../src/seed.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

const applicationPrincipal = 'AKIDAPPLICATION';

let db: TestDatabase;
let kms: TestKms;
let application: KMSClient;
let cloudTrail: CloudTrailClient;
let context: LifecycleContext;
let compromised: string;
let since: Date;
/** Decrypts the test made as the application under the compromised key, per "matter/token". */
const expected = new Map<string, number>();
const log = captureLogger();

interface VaultRow {
  id: string;
  matter_id: string;
  token: string;
  wrapped_key: Buffer;
  kek_id: string;
}

async function rowsOfMatter(matter: string, limit: number): Promise<VaultRow[]> {
  const { rows } = await db.client.query<VaultRow>(
    'SELECT id::text, matter_id, token, wrapped_key, kek_id FROM vault WHERE matter_id = $1 ORDER BY id LIMIT $2',
    [matter, limit],
  );
  return rows;
}

async function decryptAsApplication(row: VaultRow): Promise<void> {
  const output = await application.send(
    new DecryptCommand({ CiphertextBlob: row.wrapped_key, KeyId: row.kek_id, EncryptionContext: rowContext(row.matter_id, row.token) }),
  );
  output.Plaintext?.fill(0);
}

function options(stopAfter?: EmergencyOptions['stopAfter']): EmergencyOptions {
  return {
    compromised,
    since,
    access: new EmulatorKeyAccess(kms.emulator.url),
    events: new CloudTrailEventSource({ client: cloudTrail, logger: log.logger }),
    quota: Infinity,
    workers: 1,
    pendingDays: 7,
    sample: 20,
    stopAfter,
  };
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  const seeded = await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 3, rows: 300 });
  compromised = seeded.keks.get('matter-0001')!;
  application = new KMSClient({
    endpoint: kms.emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: applicationPrincipal, secretAccessKey: 'test' },
    maxAttempts: 1,
  });
  cloudTrail = createCloudTrailClient({ endpoint: kms.emulator.url });
  context = await openLifecycleContext({ databaseUrl: db.url, kmsEndpoint: kms.emulator.url, logger: log.logger });

  since = new Date(Date.now() - 1000);
  const [first, second, third] = await rowsOfMatter('matter-0001', 3);
  for (const row of [first!, first!, second!, third!]) {
    await decryptAsApplication(row);
    const key = `${row.matter_id}/${row.token}`;
    expected.set(key, (expected.get(key) ?? 0) + 1);
  }
  // A decrypt under another matter's key is not an exposure of the compromised key.
  await decryptAsApplication((await rowsOfMatter('matter-0002', 1))[0]!);
});

afterAll(async () => {
  application?.destroy();
  cloudTrail?.destroy();
  await context?.close();
  await kms?.close();
  await db?.drop();
});

describe('emergency', () => {
  it('revokes application access first', async () => {
    const result = await runEmergency(context, options('revoke'));
    expect(result.status).toBe('stopped');
    expect(result.ran).toEqual(['revoke']);
    const row = (await rowsOfMatter('matter-0001', 1))[0]!;
    const error = await decryptAsApplication(row).catch((caught: unknown) => caught);
    expect((error as Error).name).toBe('AccessDeniedException');
  });

  it('resumes at the next step', async () => {
    const result = await runEmergency(context, options());
    expect(result.resumedFrom).toBe('replace');
    expect(result.ran).toEqual(['replace', 'rewrap', 'verify', 'retire', 'report']);
    expect(result.status).toBe('done');
  });

  it('leaves no row on the compromised key', async () => {
    const { rows } = await db.client.query<{ count: string }>('SELECT count(*)::text AS count FROM vault WHERE kek_id = $1', [compromised]);
    expect(rows[0]!.count).toBe('0');
  });

  it('keeps rewrapped rows readable', async () => {
    const { rows } = await db.client.query<{ replacement: string }>(
      `SELECT detail->>'replacementArn' AS replacement FROM rewrap.emergency_steps WHERE step = 'replace'`,
    );
    const row = (await rowsOfMatter('matter-0001', 1))[0]!;
    expect(row.kek_id).toBe(rows[0]!.replacement);
    await expect(decryptAsApplication(row)).resolves.toBeUndefined();
  });

  it('disables and schedules deletion', async () => {
    const metadata = (await context.kms.send(new DescribeKeyCommand({ KeyId: compromised }))).KeyMetadata!;
    expect(metadata.KeyState).toBe('PendingDeletion');
    expect(metadata.PendingDeletionWindowInDays).toBe(7);
  });

  it('records every step as done', async () => {
    const { rows } = await db.client.query<{ step: string }>(`SELECT step FROM rewrap.emergency_steps WHERE status = 'done' ORDER BY finished_at`);
    expect(rows.map((row) => row.step)).toEqual(['revoke', 'replace', 'rewrap', 'verify', 'retire', 'report']);
  });

  it('reports the application\'s decrypts', async () => {
    const { rows } = await db.client.query<{ detail: { report: { exposures: Array<{ matter: string; token: string; principal: string; operation: string; count: number }> } } }>(
      `SELECT detail FROM rewrap.emergency_steps WHERE step = 'report'`,
    );
    const exposures = rows[0]!.detail.report.exposures;
    const reported = new Map(exposures.map((entry) => [`${entry.matter}/${entry.token}`, entry.count]));
    expect(reported).toEqual(expected);
    expect(new Set(exposures.map((entry) => entry.principal))).toEqual(new Set([applicationPrincipal]));
    expect(new Set(exposures.map((entry) => entry.operation))).toEqual(new Set(['Decrypt']));
  });

  it('reports the denied attempt', async () => {
    const { rows } = await db.client.query<{ detail: { report: { denied: Array<{ principal: string; error: string; count: number }> } } }>(
      `SELECT detail FROM rewrap.emergency_steps WHERE step = 'report'`,
    );
    expect(rows[0]!.detail.report.denied).toContainEqual({ principal: applicationPrincipal, operation: 'Decrypt', error: 'AccessDeniedException', count: 1 });
  });

  it('leaves a verifiable audit trail', async () => {
    const verification = await context.audit.verify();
    const actions = (await context.audit.records()).map((record) => record.action);
    expect(verification.ok).toBe(true);
    expect(actions).toContain('rotate.start');
    expect(actions).toContain('rotate.finish');
    expect(actions.filter((action) => action === 'emergency.step').length).toBe(6);
    expect(actions[actions.length - 1]).toBe('emergency.finish');
  });

  it('rejects a rerun after it finished', async () => {
    await expect(runEmergency(context, options())).rejects.toThrow(/already replaced/);
  });

  it('allows only the rotation principal', async () => {
    const principal = await kmsPrincipal(context.kms);
    const record = kms.emulator.store.resolveKey(compromised);
    expect(record.allowedPrincipals).toEqual([principal]);
  });
});

describe('emergency after a failed step', () => {
  it('resumes at the failed step', async () => {
    const second = (await rowsOfMatter('matter-0002', 1))[0]!.kek_id;
    const run = { ...options(), compromised: second };
    kms.emulator.configure({ faults: { CreateKey: { errorRate: 1, errorName: 'KMSInternalException', errorStatus: 500 } } });
    const error = await runEmergency(context, run).catch((caught: unknown) => caught);
    kms.emulator.configure({ faults: {} });
    expect((error as Error).name).toBe('EmergencyStepError');
    expect((error as Error).message).toMatch(/step replace/);

    const result = await runEmergency(context, run);
    expect(result.resumedFrom).toBe('replace');
    expect(result.ran[0]).toBe('replace');
    expect(result.status).toBe('done');
  });
});
