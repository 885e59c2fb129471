import { execFile } from 'node:child_process';
import { writeFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand, DescribeKeyCommand, DisableKeyCommand, ListAliasesCommand, ListResourceTagsCommand } from '@aws-sdk/client-kms';
import { UsageError } from '../src/cli/args.js';
import { lifecycleCommands } from '../src/cli/lifecycle-commands.js';
import { openLifecycleContext, type LifecycleContext } from '../src/lifecycle/context.js';
import { buildExposureReport, exposureMarkdown } from '../src/lifecycle/exposure.js';
import { createMatterKey, listKeys } from '../src/lifecycle/keys.js';
import { planRotation } from '../src/lifecycle/plan.js';
import { checkPolicy, parsePolicy } from '../src/lifecycle/policy.js';
import { KeyInUseError, retireKey } from '../src/lifecycle/retire.js';
import { shredMatter } from '../src/lifecycle/shred.js';
import { verifyRotation } from '../src/lifecycle/verify.js';
import { rotate } from '../src/rotate/engine.js';
import { seedVault } from '../src/seed.js';
import { createTestDatabase, type TestDatabase } from './helpers/db.js';
import { startTestKms, type TestKms } from './helpers/kms.js';
import { captureLogger } from './helpers/log.js';

const run = promisify(execFile);

let db: TestDatabase;
let kms: TestKms;
let context: LifecycleContext;
let keks: Map<string, string>;
const log = captureLogger();

async function newKey(): Promise<string> {
  return (await kms.client.send(new CreateKeyCommand({ Description: 'test target' }))).KeyMetadata!.Arn!;
}

async function keyState(arn: string): Promise<string | undefined> {
  return (await kms.client.send(new DescribeKeyCommand({ KeyId: arn }))).KeyMetadata?.KeyState;
}

async function rotateMatter(matter: string, target: string) {
  return rotate({ databaseUrl: db.url, matters: [matter], target, kmsEndpoint: kms.emulator.url, quota: Infinity, workers: 1, logger: log.logger });
}

beforeAll(async () => {
  db = await createTestDatabase();
  kms = await startTestKms();
  const seeded = await seedVault({ client: db.client, kms: kms.client, emulatorUrl: kms.emulator.url, matters: 4, rows: 400 });
  keks = seeded.keks;
  context = await openLifecycleContext({ databaseUrl: db.url, kmsEndpoint: kms.emulator.url, logger: log.logger });
});

afterAll(async () => {
  await context?.close();
  await kms?.close();
  await db?.drop();
});

describe('keys', () => {
  it('creates a tagged, aliased matter key', async () => {
    const created = await createMatterKey(context, 'alpha');
    const tags = (await kms.client.send(new ListResourceTagsCommand({ KeyId: created.keyArn }))).Tags ?? [];
    const aliases = (await kms.client.send(new ListAliasesCommand({ KeyId: created.keyArn }))).Aliases ?? [];
    const { rows } = await db.client.query('SELECT matter_id, key_class FROM rewrap.keys WHERE key_arn = $1', [created.keyArn]);
    expect(tags).toContainEqual({ TagKey: 'matter', TagValue: 'alpha' });
    expect(aliases.map((alias) => alias.AliasName)).toEqual(['alias/rewrap/matter/alpha']);
    expect(rows).toEqual([{ matter_id: 'alpha', key_class: 'matter' }]);
  });

  it('rejects a second key per matter', async () => {
    await expect(createMatterKey(context, 'alpha')).rejects.toThrow(/already has KEK/);
  });

  it('rejects a matter id unfit for an alias', async () => {
    await expect(createMatterKey(context, 'a b')).rejects.toThrow(UsageError);
  });

  it('lists keys with state and age', async () => {
    const keys = await listKeys(context);
    const alpha = keys.find((key) => key.matter === 'alpha');
    expect(alpha?.state).toBe('Enabled');
    expect(alpha?.ageDays).toBe(0);
  });
});

describe('plan', () => {
  it('counts rows and estimates duration', async () => {
    const target = await newKey();
    const plan = await planRotation(context, { matter: 'matter-0001', target, quota: 50 });
    expect(plan.rows).toBe(100);
    expect(plan.sources).toEqual([{ table: 'public.vault', kekArn: keks.get('matter-0001'), rows: 100 }]);
    expect(plan.estimatedSeconds).toBe(2);
    expect(plan.ok).toBe(true);
    expect(plan.checks.find((check) => check.name === 'ReEncrypt one row')?.ok).toBe(true);
  });

  it('writes nothing back', async () => {
    const before = await db.client.query(`SELECT md5(string_agg(encode(wrapped_key, 'hex') || kek_id, ',' ORDER BY id)) AS digest FROM vault`);
    await planRotation(context, { matter: 'matter-0001', target: await newKey(), quota: 50 });
    const after = await db.client.query(`SELECT md5(string_agg(encode(wrapped_key, 'hex') || kek_id, ',' ORDER BY id)) AS digest FROM vault`);
    expect(after.rows[0].digest).toBe(before.rows[0].digest);
  });

  it('warns about a disabled target', async () => {
    const target = await newKey();
    await kms.client.send(new DisableKeyCommand({ KeyId: target }));
    const plan = await planRotation(context, { matter: 'matter-0001', target, quota: 50 });
    expect(plan.warnings.some((warning) => warning.includes('Disabled'))).toBe(true);
    expect(plan.ok).toBe(false);
  });

  it('warns about a source pending deletion', async () => {
    const source = keks.get('matter-0004')!;
    kms.emulator.store.scheduleKeyDeletion(source, 7);
    const plan = await planRotation(context, { matter: 'matter-0004', target: await newKey(), quota: 50 });
    kms.emulator.store.cancelKeyDeletion(source);
    kms.emulator.store.enableKey(source);
    expect(plan.warnings.some((warning) => warning.includes('pending deletion'))).toBe(true);
  });

  it('rejects another matter\'s key by default', async () => {
    const plan = await planRotation(context, { matter: 'matter-0001', target: keks.get('matter-0002')!, quota: 50 });
    expect(plan.ok).toBe(false);
    expect(plan.checks.find((check) => check.name === 'encryption context')?.detail).toMatch(/--cross-matter matter-0001:matter-0002/);
  });

  it('allows a cross-matter rewrap named explicitly', async () => {
    const plan = await planRotation(context, {
      matter: 'matter-0001',
      target: keks.get('matter-0002')!,
      quota: 50,
      crossMatter: { from: 'matter-0001', to: 'matter-0002' },
    });
    expect(plan.checks.find((check) => check.name === 'encryption context')?.ok).toBe(true);
  });
});

describe('verify', () => {
  it('fails while rows remain on the old key', async () => {
    const result = await verifyRotation(context, { matters: ['matter-0002'], kek: keks.get('matter-0002')!, sample: 5 });
    expect(result.ok).toBe(false);
    expect(result.remaining).toEqual([{ table: 'public.vault', rows: 100 }]);
  });

  it('passes after rotation', async () => {
    const target = await newKey();
    const summary = await rotateMatter('matter-0002', target);
    expect(summary.status).toBe('done');
    const result = await verifyRotation(context, { matters: ['matter-0002'], kek: keks.get('matter-0002')!, sample: 20 });
    expect(result.remaining).toEqual([{ table: 'public.vault', rows: 0 }]);
    expect(result.failures).toEqual([]);
    expect(result.sampled).toBe(20);
    expect(result.ok).toBe(true);
  });

  it('fails a row whose context names another matter', async () => {
    const { rows } = await db.client.query<{ id: string }>(`SELECT id::text FROM vault WHERE matter_id = 'matter-0002' ORDER BY id LIMIT 1`);
    const id = rows[0]!.id;
    await db.client.query(`UPDATE vault SET matter_id = 'matter-0009' WHERE id = $1`, [id]);
    try {
      const result = await verifyRotation(context, { matters: ['matter-0009'], kek: keks.get('matter-0002')!, sample: 5 });
      expect(result.failures.map((failure) => failure.error)).toEqual(['InvalidCiphertextException']);
      expect(result.ok).toBe(false);
    } finally {
      await db.client.query(`UPDATE vault SET matter_id = 'matter-0002' WHERE id = $1`, [id]);
    }
  });

  it('checks every configured table', async () => {
    await db.client.query('CREATE TABLE vault_copy (LIKE vault INCLUDING ALL)');
    await db.client.query(`INSERT INTO vault_copy SELECT * FROM vault WHERE matter_id = 'matter-0003' LIMIT 3`);
    const tables = [{ ...context.tables[0]! }, { ...context.tables[0]!, name: 'public.vault_copy' }];
    const wide = { ...context, tables };
    const result = await verifyRotation(wide, { matters: null, kek: keks.get('matter-0003')!, sample: 0 });
    expect(result.remaining).toEqual([
      { table: 'public.vault', rows: 100 },
      { table: 'public.vault_copy', rows: 3 },
    ]);
  });
});

describe('retire', () => {
  it('refuses while rows remain', async () => {
    const kek = keks.get('matter-0003')!;
    const error = await retireKey(context, { kek }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KeyInUseError);
    expect((error as Error).message).toMatch(/100 rows in public\.vault/);
    expect(await keyState(kek)).toBe('Enabled');
  });

  it('rejects pending days 6 and 31', async () => {
    for (const days of [6, 31]) {
      await expect(retireKey(context, { kek: keks.get('matter-0002')!, pendingDays: days })).rejects.toThrow(UsageError);
    }
  });

  it('changes nothing on a dry run', async () => {
    const kek = keks.get('matter-0002')!;
    const result = await retireKey(context, { kek, dryRun: true });
    expect(result.actions[0]).toBe(`DisableKey ${kek}`);
    expect(await keyState(kek)).toBe('Enabled');
  });

  it('disables, then schedules deletion', async () => {
    const kek = keks.get('matter-0002')!;
    const since = new Date().toISOString();
    const result = await retireKey(context, { kek, pendingDays: 7 });
    const calls = kms.emulator
      .requestLog()
      .filter((event) => event.eventTime >= since && (event.eventName === 'DisableKey' || event.eventName === 'ScheduleKeyDeletion'))
      .map((event) => event.eventName);
    expect(calls).toEqual(['DisableKey', 'ScheduleKeyDeletion']);
    expect(result.pendingDays).toBe(7);
    expect(await keyState(kek)).toBe('PendingDeletion');
  });
});

describe('shred', () => {
  it('refuses a KEK shared with another matter', async () => {
    const shared = keks.get('matter-0004')!;
    await db.client.query(`UPDATE vault SET kek_id = $1, matter_id = 'matter-0005' WHERE id = (SELECT min(id) FROM vault WHERE matter_id = 'matter-0001')`, [shared]);
    const error = await shredMatter(context, { matter: 'matter-0004' }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KeyInUseError);
    expect((error as Error).message).toMatch(/matter-0005/);
    expect(await keyState(shared)).toBe('Enabled');
  });

  it('refuses rows off the recorded KEK', async () => {
    const recorded = await createMatterKey(context, 'matter-0001');
    const error = await shredMatter(context, { matter: 'matter-0001' }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KeyInUseError);
    expect((error as Error).message).toMatch(new RegExp(`not its recorded KEK ${recorded.keyArn}`));
    expect(await keyState(recorded.keyArn)).toBe('Enabled');
  });

  it('schedules deletion of a dedicated KEK', async () => {
    const kek = keks.get('matter-0003')!;
    const result = await shredMatter(context, { matter: 'matter-0003', pendingDays: 7 });
    const { rows } = await db.client.query('SELECT kek_arn FROM rewrap.shredded_matters WHERE matter_id = $1', ['matter-0003']);
    expect(result.keyArn).toBe(kek);
    expect(await keyState(kek)).toBe('PendingDeletion');
    expect(rows).toEqual([{ kek_arn: kek }]);
  });
});

describe('policy check', () => {
  it('lists overdue matter keys', async () => {
    const later = new Date(Date.now() + 10 * 86_400_000);
    const result = await checkPolicy(context, parsePolicy('{"maxAgeDays": {"matter": 5, "tenant": 3650}}', 'test'), later);
    expect(result.ok).toBe(false);
    expect(result.overdue.some((key) => key.matter === 'alpha')).toBe(true);
    expect(result.overdue.every((key) => key.keyClass === 'matter')).toBe(true);
  });

  it('passes keys within their maximum age', async () => {
    const result = await checkPolicy(context, parsePolicy('{"maxAgeDays": {"matter": 30, "tenant": 30, "audit-signing": 30}}', 'test'));
    expect(result.overdue).toEqual([]);
    expect(result.ok).toBe(true);
  });

  it('rejects an unknown key class', () => {
    expect(() => parsePolicy('{"maxAgeDays": {"user": 5}}', 'test')).toThrow(UsageError);
  });
});

describe('exposure report', () => {
  it('groups decrypts by matter, token and principal', () => {
    const kek = 'arn:aws:kms:us-east-1:111122223333:key/k';
    const event = (name: string, principal: string, token: string, errorCode?: string) => ({
      eventTime: '2026-01-01T00:00:00.000Z',
      eventName: name,
      userIdentity: { accessKeyId: principal },
      requestParameters: { encryptionContext: { matter: 'm1', token } },
      resources: [{ ARN: kek }],
      errorCode,
    });
    const report = buildExposureReport(kek, new Date(0), new Date(), [
      event('Decrypt', 'APP', 't1'),
      event('Decrypt', 'APP', 't1'),
      event('ReEncrypt', 'ROT', 't1'),
      event('Decrypt', 'APP', 't2', 'AccessDeniedException'),
    ]);
    expect(report.exposures.map((entry) => [entry.matter, entry.token, entry.principal, entry.count])).toEqual([['m1', 't1', 'APP', 2]]);
    expect(report.denied).toEqual([{ principal: 'APP', operation: 'Decrypt', error: 'AccessDeniedException', count: 1 }]);
    expect(exposureMarkdown(report)).toContain('| m1 | t1 | APP | Decrypt | 2 |');
  });
});

describe('cli', () => {
  it('exits 2 for pending days 6 and 31', async () => {
    for (const days of ['6', '31']) {
      const error = await run('npx', ['tsx', 'src/cli/main.ts', 'retire', '--kek', 'alias/x', '--pending-days', days]).catch((caught: unknown) => caught);
      expect((error as { code?: number }).code).toBe(2);
    }
  });

  it('exits 1 when retire refuses', async () => {
    const env = { ...process.env, DATABASE_URL: db.url };
    const error = await run('npx', ['tsx', 'src/cli/main.ts', 'retire', '--kek', keks.get('matter-0001')!, '--kms-endpoint', kms.emulator.url], { env }).catch(
      (caught: unknown) => caught,
    );
    expect((error as { code?: number }).code).toBe(1);
    expect((error as { stderr?: string }).stderr).toMatch(/rows are still wrapped under it/);
  });

  it('exits 1 for an overdue key', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rewrap-policy-'));
    const file = join(dir, 'policy.json');
    await writeFile(file, '{"maxAgeDays": {"matter": 0, "tenant": 0}}');
    const previous = process.env.DATABASE_URL;
    process.env.DATABASE_URL = db.url;
    try {
      const code = await lifecycleCommands.policy!(['check', '--policy', file, '--kms-endpoint', kms.emulator.url, '--json'], log.logger);
      expect(code).toBe(1);
    } finally {
      process.env.DATABASE_URL = previous;
    }
  });

  it('verify exits 0 after rotation', async () => {
    const args = ['--matter', 'matter-0002', '--kek', keks.get('matter-0002')!, '--sample', '5', '--database-url', db.url, '--kms-endpoint', kms.emulator.url];
    expect(await lifecycleCommands.verify!(args, log.logger)).toBe(0);
  });

  it('verify exits 1 with rows left', async () => {
    const args = ['--matter', 'matter-0001', '--kek', keks.get('matter-0001')!, '--database-url', db.url, '--kms-endpoint', kms.emulator.url];
    expect(await lifecycleCommands.verify!(args, log.logger)).toBe(1);
  });

  it('logs no wrapped key or MAC', () => {
    const text = log.text();
    expect(text).not.toMatch(/"(wrappedKey|wrapped_key|Plaintext|CiphertextBlob|Mac)"/);
  });
});

describe('audit of lifecycle actions', () => {
  it('records every action', async () => {
    const actions = new Set((await context.audit.records()).map((record) => record.action));
    for (const action of ['key.create', 'key.retire', 'matter.shred', 'rotation.verify', 'policy.check']) {
      expect(actions.has(action), action).toBe(true);
    }
  });

  it('verifies after every command', async () => {
    const result = await context.audit.verify();
    expect(result.firstBroken).toBeUndefined();
    expect(result.ok).toBe(true);
  });
});
