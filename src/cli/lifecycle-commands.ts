import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { defaultVaultTable, type VaultTable } from '../db/table.js';
import { AwsKeyAccess, EmulatorKeyAccess, KeyPolicyAccess, RotationPrincipalPolicyAccess } from '../lifecycle/access.js';
import { openLifecycleContext, resolveKeyArn, type LifecycleContext } from '../lifecycle/context.js';
import { emergencySteps, runEmergency, type EmergencyStep } from '../lifecycle/emergency.js';
import { CloudTrailEventSource, createCloudTrailClient } from '../lifecycle/cloudtrail.js';
import { exposureMarkdown, exposureReport } from '../lifecycle/exposure.js';
import { createMatterKey, listKeys } from '../lifecycle/keys.js';
import { planRotation } from '../lifecycle/plan.js';
import { checkPolicy, loadPolicy } from '../lifecycle/policy.js';
import { KeyInUseError, retireKey } from '../lifecycle/retire.js';
import { shredMatter } from '../lifecycle/shred.js';
import { verifyRotation } from '../lifecycle/verify.js';
import type { Logger } from '../log.js';
import { connectionOptions, databaseUrlFrom, parseInteger, parsePositive, requireString, UsageError } from './args.js';

type Command = (argv: string[], logger: Logger) => Promise<number>;

const done = 0;
const failed = 1;

/** Options every lifecycle command takes. */
const commonOptions = {
  ...connectionOptions,
  table: { type: 'string', multiple: true },
  json: { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

interface CommonValues {
  'database-url'?: string | undefined;
  'kms-endpoint'?: string | undefined;
  'kms-region'?: string | undefined;
  table?: string[] | undefined;
}

/** Maps `--table NAME` to a vault table with the default column names. */
function tablesFrom(names: string[] | undefined): VaultTable[] {
  return (names ?? []).map((name) => ({ ...defaultVaultTable, name }));
}

async function withContext<T>(values: CommonValues, logger: Logger, fn: (context: LifecycleContext) => Promise<T>): Promise<T> {
  const context = await openLifecycleContext({
    databaseUrl: databaseUrlFrom(values['database-url']),
    kmsEndpoint: values['kms-endpoint'],
    kmsRegion: values['kms-region'],
    tables: tablesFrom(values.table),
    logger,
  });
  try {
    return await fn(context);
  } finally {
    await context.close();
  }
}

function parseTime(value: string | undefined, flag: string, hint: string): Date {
  const text = requireString(value, flag, hint);
  const time = Date.parse(text);
  if (Number.isNaN(time)) throw new UsageError(`invalid ${flag} "${text}": expected an ISO 8601 time such as 2026-01-31T12:00:00Z`);
  return new Date(time);
}

function pendingDaysFrom(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const days = Number(value);
  if (!Number.isInteger(days) || days < 7 || days > 30) {
    throw new UsageError(`invalid --pending-days "${value}": AWS KMS accepts an integer from 7 to 30`);
  }
  return days;
}

function print(json: boolean | undefined, value: unknown, text: string): void {
  console.log(json === true ? JSON.stringify(value) : text);
}

/** Prints a refusal and returns exit status 1, or rethrows anything else. */
function refusal(error: unknown): number {
  if (error instanceof KeyInUseError) {
    console.error(error.message);
    return failed;
  }
  throw error;
}

async function commandKeys(argv: string[], logger: Logger): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parseArgs({ args: rest, options: { ...commonOptions, matter: { type: 'string' } } });
  if (sub === 'create') {
    const matter = requireString(values.matter, '--matter', 'name the matter the key is for, for example --matter matter-0001');
    const created = await withContext(values, logger, (context) => createMatterKey(context, matter));
    print(values.json, created, `created ${created.keyArn} for matter ${created.matter} (${created.aliasName})`);
    return done;
  }
  if (sub === 'list') {
    const keys = await withContext(values, logger, (context) => listKeys(context));
    const lines = keys.map(
      (key) =>
        `${key.keyArn}  ${key.keyClass}  matter=${key.matter ?? '-'}  ${key.state}  ${key.ageDays} days${key.retiredAt === null ? '' : `  retired ${key.retiredAt}`}`,
    );
    print(values.json, keys, lines.length === 0 ? 'no keys recorded; create one with "rewrap keys create --matter M"' : lines.join('\n'));
    return done;
  }
  throw new UsageError(`unknown keys command "${sub ?? ''}": expected "keys create --matter M" or "keys list"`);
}

async function commandPlan(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...commonOptions, matter: { type: 'string' }, to: { type: 'string' }, 'kms-quota': { type: 'string' }, 'cross-matter': { type: 'string' } },
  });
  const matter = requireString(values.matter, '--matter', 'name the matter to plan, for example --matter matter-0001');
  const target = requireString(values.to, '--to', 'name the target KEK by key id, ARN or alias');
  const quota = parsePositive(values['kms-quota'], '--kms-quota', 10_000, true);
  let crossMatter: { from: string; to: string } | undefined;
  if (values['cross-matter'] !== undefined) {
    const [from, to, extra] = values['cross-matter'].split(':');
    if (from === undefined || to === undefined || from === '' || to === '' || extra !== undefined) {
      throw new UsageError(`invalid --cross-matter "${values['cross-matter']}": expected FROM:TO, the source matter and the target key's matter`);
    }
    crossMatter = { from, to };
  }
  const plan = await withContext(values, logger, (context) => planRotation(context, { matter, target, quota, crossMatter }));
  const lines = [
    `plan: matter ${plan.matter} to ${plan.targetArn ?? plan.target}: ${plan.rows} rows, about ${plan.estimatedSeconds}s at ${quota} requests/s`,
    ...plan.sources.map((source) => `  ${source.rows} rows in ${source.table} under ${source.kekArn}`),
    ...plan.checks.map((check) => `  ${check.ok ? 'ok  ' : 'FAIL'} ${check.name}: ${check.detail}`),
    ...plan.warnings.map((warning) => `  warning: ${warning}`),
  ];
  print(values.json, plan, lines.join('\n'));
  return plan.ok ? done : failed;
}

async function commandVerify(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...commonOptions, matter: { type: 'string', multiple: true }, all: { type: 'boolean' }, kek: { type: 'string' }, sample: { type: 'string' } },
  });
  const matters = values.matter ?? [];
  if (values.all === true && matters.length > 0) throw new UsageError('give either --all or --matter, not both');
  if (values.all !== true && matters.length === 0) throw new UsageError('missing scope: pass --matter ID (repeatable) or --all');
  const kek = requireString(values.kek, '--kek', 'name the old KEK that no row may still use');
  const sample = parseInteger(values.sample, '--sample', 100, 0);
  const result = await withContext(values, logger, (context) => verifyRotation(context, { matters: values.all === true ? null : matters, kek, sample }));
  const remaining = result.remaining.reduce((sum, count) => sum + count.rows, 0);
  const lines = [
    `${result.ok ? 'ok' : 'FAILED'}: ${remaining} rows still on ${result.kekArn}; ${result.sampled} sampled, ${result.failures.length} did not unwrap`,
    ...result.failures.map((failure) => `  ${failure.table} row ${failure.key} (matter ${failure.matter}, KEK ${failure.kekArn}): ${failure.error}`),
  ];
  print(values.json, result, lines.join('\n'));
  return result.ok ? done : failed;
}

async function commandRetire(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...commonOptions, kek: { type: 'string' }, 'pending-days': { type: 'string' }, 'dry-run': { type: 'boolean' } },
  });
  const kek = requireString(values.kek, '--kek', 'name the KEK to retire by key id, ARN or alias');
  const pendingDays = pendingDaysFrom(values['pending-days']);
  try {
    const result = await withContext(values, logger, (context) => retireKey(context, { kek, pendingDays, dryRun: values['dry-run'] }));
    const text = result.dryRun
      ? ['dry run, nothing changed; retire would:', ...result.actions.map((action) => `  ${action}`)].join('\n')
      : `retired ${result.keyArn}: disabled, deletion scheduled for ${result.deletionDate ?? 'an unknown date'}`;
    print(values.json, result, text);
    return done;
  } catch (error) {
    return refusal(error);
  }
}

async function commandShred(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { ...commonOptions, matter: { type: 'string' }, 'pending-days': { type: 'string' } } });
  const matter = requireString(values.matter, '--matter', 'name the matter to shred');
  const pendingDays = pendingDaysFrom(values['pending-days']);
  try {
    const result = await withContext(values, logger, (context) => shredMatter(context, { matter, pendingDays }));
    print(values.json, result, `matter ${result.matter} shredded: ${result.keyArn} is scheduled for deletion on ${result.deletionDate ?? 'an unknown date'}`);
    return done;
  } catch (error) {
    return refusal(error);
  }
}

/** `--cloudtrail-endpoint`, which defaults to `--kms-endpoint` so that a KMS emulator answers both APIs. */
const cloudTrailOptions = { 'cloudtrail-endpoint': { type: 'string' } } as const satisfies ParseArgsConfig['options'];

/** Runs `fn` with a CloudTrail event source for the endpoint and region the options name, and closes its client. */
async function withEventSource<T>(
  values: CommonValues & { 'cloudtrail-endpoint'?: string | undefined },
  logger: Logger,
  fn: (source: CloudTrailEventSource) => Promise<T>,
): Promise<T> {
  const client = createCloudTrailClient({ endpoint: values['cloudtrail-endpoint'] ?? values['kms-endpoint'], region: values['kms-region'] });
  try {
    return await fn(new CloudTrailEventSource({ client, logger }));
  } finally {
    client.destroy();
  }
}

async function commandEmergency(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      ...commonOptions,
      ...cloudTrailOptions,
      compromised: { type: 'string' },
      since: { type: 'string' },
      'kms-quota': { type: 'string' },
      'pending-days': { type: 'string' },
      sample: { type: 'string' },
      workers: { type: 'string' },
      'stop-after': { type: 'string' },
      'rotation-principal-arn': { type: 'string' },
    },
  });
  const principalArn = values['rotation-principal-arn'];
  if (principalArn !== undefined && !/^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+/.test(principalArn)) {
    throw new UsageError(`invalid --rotation-principal-arn "${principalArn}": expected an IAM ARN such as arn:aws:iam::123456789012:role/rewrap`);
  }
  const compromised = requireString(values.compromised, '--compromised', 'name the compromised KEK by key id, ARN or alias');
  const since = parseTime(values.since, '--since', 'give the earliest time the key may have leaked, for example --since 2026-01-31T00:00:00Z');
  const stopAfter = values['stop-after'];
  if (stopAfter !== undefined && !emergencySteps.includes(stopAfter as EmergencyStep)) {
    throw new UsageError(`invalid --stop-after "${stopAfter}": expected one of ${emergencySteps.join(', ')}`);
  }
  const endpoint = values['kms-endpoint'];
  const result = await withEventSource(values, logger, (events) => withContext(values, logger, (context) =>
    runEmergency(context, {
      compromised,
      since,
      // With a stated rotation principal the key policy is changed, on AWS and on the emulator alike.
      access:
        principalArn !== undefined
          ? new RotationPrincipalPolicyAccess(new KeyPolicyAccess(context.kms), principalArn)
          : endpoint === undefined
            ? new AwsKeyAccess()
            : new EmulatorKeyAccess(endpoint),
      events,
      quota: parsePositive(values['kms-quota'], '--kms-quota', 10_000, true),
      pendingDays: pendingDaysFrom(values['pending-days']),
      sample: parseInteger(values.sample, '--sample', 100, 0),
      workers: values.workers === undefined ? undefined : parseInteger(values.workers, '--workers', 1),
      stopAfter: stopAfter as EmergencyStep | undefined,
    }),
  ));
  const text = [
    `emergency run ${result.runId} for ${result.compromisedArn}: ${result.status}; ran ${result.ran.join(', ') || 'nothing'}` +
      (result.resumedFrom === null ? '' : ` (resumed at ${result.resumedFrom})`),
    result.replacementArn === null ? '' : `replacement key: ${result.replacementArn}`,
    result.report === null ? '' : exposureMarkdown(result.report),
  ].filter((line) => line !== '');
  print(values.json, result, text.join('\n'));
  return done;
}

async function commandExposure(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...commonOptions, ...cloudTrailOptions, kek: { type: 'string' }, since: { type: 'string' }, until: { type: 'string' }, format: { type: 'string' } },
  });
  const kek = requireString(values.kek, '--kek', 'name the KEK whose use to report');
  const since = parseTime(values.since, '--since', 'give the start of the window, for example --since 2026-01-31T00:00:00Z');
  const until = values.until === undefined ? new Date() : parseTime(values.until, '--until', 'give the end of the window');
  if (until.getTime() <= since.getTime()) throw new UsageError(`invalid window: --until ${until.toISOString()} is not after --since ${since.toISOString()}`);
  const format = values.format ?? (values.json === true ? 'json' : 'markdown');
  if (format !== 'json' && format !== 'markdown') throw new UsageError(`invalid --format "${format}": expected json or markdown`);
  const report = await withEventSource(values, logger, (source) =>
    withContext(values, logger, async (context) => exposureReport(context, source, await resolveKeyArn(context.kms, kek), since, until)),
  );
  if (format === 'json') console.log(JSON.stringify(report));
  else process.stdout.write(exposureMarkdown(report));
  return done;
}

async function commandPolicy(argv: string[], logger: Logger): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'check') throw new UsageError(`unknown policy command "${sub ?? ''}": expected "policy check --policy FILE"`);
  const { values } = parseArgs({ args: rest, options: { ...commonOptions, policy: { type: 'string' } } });
  const policy = await loadPolicy(requireString(values.policy, '--policy', 'name a JSON file such as {"maxAgeDays": {"tenant": 365}}'));
  const result = await withContext(values, logger, (context) => checkPolicy(context, policy));
  const lines = [
    `${result.overdue.length} of ${result.keys.length} keys are overdue`,
    ...result.overdue.map((key) => `  ${key.keyArn}  ${key.keyClass}  matter=${key.matter ?? '-'}  ${key.ageDays} days old, maximum ${key.maxAgeDays ?? '-'}`),
  ];
  print(values.json, result, lines.join('\n'));
  return result.ok ? done : failed;
}

async function commandAudit(argv: string[], logger: Logger): Promise<number> {
  const [sub, ...rest] = argv;
  const { values } = parseArgs({ args: rest, options: { ...commonOptions, out: { type: 'string' } } });
  if (sub === 'verify') {
    const result = await withContext(values, logger, (context) => context.audit.verify());
    const text = result.ok
      ? `ok: ${result.records} records, head at ${result.headSeq ?? 'none'}`
      : `BROKEN at record ${result.firstBroken!.seq}: ${result.firstBroken!.reason}`;
    print(values.json, result, text);
    return result.ok ? done : failed;
  }
  if (sub === 'export') {
    const { records, head } = await withContext(values, logger, async (context) => ({ records: await context.audit.records(), head: await context.audit.head() }));
    const lines = [...records.map((record) => JSON.stringify(record)), JSON.stringify({ head })];
    if (values.out === undefined) {
      process.stdout.write(lines.join('\n') + '\n');
    } else {
      const stream = createWriteStream(values.out, { flags: 'wx' });
      stream.end(lines.join('\n') + '\n');
      await once(stream, 'finish');
      console.error(`wrote ${records.length} records and the head to ${values.out}`);
    }
    return done;
  }
  throw new UsageError(`unknown audit command "${sub ?? ''}": expected "audit verify" or "audit export [--out FILE]"`);
}

/** The key lifecycle commands, keyed by command name. */
export const lifecycleCommands: Record<string, Command> = {
  keys: commandKeys,
  plan: commandPlan,
  verify: commandVerify,
  retire: commandRetire,
  shred: commandShred,
  emergency: commandEmergency,
  exposure: commandExposure,
  policy: commandPolicy,
  audit: commandAudit,
};
