#!/usr/bin/env node
import { parseArgs } from 'node:util';
import pg from 'pg';
import { initSchema, schemaVersion } from '../db/schema.js';
import { createKmsClient } from '../kms/client.js';
import { defaultKmsTransport, kmsTransportNames, type KmsTransportName } from '../kms/transport/index.js';
import { startEmulator } from '../kms/emulator/index.js';
import { createLogger, type Logger } from '../log.js';
import { rotate, RotateUsageError, ScopeBusyError, type RotateSummary } from '../rotate/engine.js';
import { seedVault } from '../seed.js';
import { AuditTrail } from '../audit/trail.js';
import { loadTableConfig, TableConfigError } from '../db/table-config.js';
import { auditDetails } from '../lifecycle/emergency.js';
import { quarantineCommands } from './quarantine-commands.js';
import { commandRotateJob, fleetCommands } from './fleet-commands.js';
import { lifecycleCommands } from './lifecycle-commands.js';
import { connectionOptions, databaseUrlFrom, parseInteger, parsePositive, requireString, UsageError } from './args.js';
import { withClient } from './database.js';

/** Exit statuses, stable for schedulers. */
export const exitCodes = { done: 0, failed: 1, usage: 2, partial: 3, busy: 75 } as const;

const help = `rewrap: rotate envelope-encryption keys at the speed of the KMS quota

Usage: rewrap <command> [options]

Commands:
  init                       create or upgrade the vault table and rewrap's schema
  seed --matters M --rows N  fill the vault with DEKs under one new KEK per matter
  rotate (--matter ID... | --all) --to KEY
                             rewrap the scope's DEKs under KEY (key id, ARN or alias)
  kms-emulator               run the KMS emulator (AWS KMS JSON protocol over HTTP)
  job create (--matter ID... | --all) --to KEY [--partitions N]
                             split a rotation into key-range partitions (default 16); prints the job id
  rotate --job J [--redis URL] [--kms-quota RPS] [--lease-seconds S]
                             run one of any number of processes of job J; with --redis every process
                             shares one bucket of RPS, else each takes RPS / live processes
  status --job J [--json]    show a job's partitions, owners, leases, progress, rate and ETA
  quarantine list [--matter ID] [--json]
                             list rows that could not be rewrapped, with their reasons
  quarantine retry (--id N... | --matter ID | --all)
                             release quarantined rows so the next rotate reads them again
  keys create --matter M     create a KEK for one matter (tag matter=M, alias/rewrap/matter/M)
  keys list                  list recorded keys with matter, KMS state and age in days
  plan --matter M --to KEY [--kms-quota RPS] [--cross-matter FROM:TO]
                             dry run: rows per source KEK, estimated time, permission checks
  verify (--matter M... | --all) --kek OLD [--sample N]
                             check no row is left on OLD and a sample of N rows unwraps (default 100)
  retire --kek OLD [--pending-days D] [--dry-run]
                             disable OLD and schedule its deletion in D days (7-30, default 30)
  shred --matter M [--pending-days D]
                             schedule deletion of the matter's KEK and mark the matter shredded
  emergency --compromised KEY --since TIME [--rotation-principal-arn ARN] [--kms-quota RPS] [--stop-after STEP]
                             revoke, replace, rewrap, verify, retire KEY and report its exposure;
                             a rerun resumes at the step that did not finish
  exposure --kek KEY --since TIME [--until TIME] [--format json|markdown]
                             which matters and tokens were decrypted under KEY, by whom
  policy check --policy FILE exit 1 when a key is older than its class's maximum age in days
  audit verify | audit export [--out FILE]
                             check the audit trail's chain and MACs, or write it as JSON lines
  (lifecycle commands take --table NAME, repeatable, for the vault tables to check; default public.vault;
   exposure and emergency take --cloudtrail-endpoint URL, default the --kms-endpoint when one is given)

Common options:
  --database-url URL   PostgreSQL connection string (default: DATABASE_URL)
  --kms-endpoint URL   KMS endpoint, for example the emulator (default: AWS)
  --kms-region REGION  AWS region (default: AWS_REGION, then us-east-1)

rotate options:
  --kms-quota RPS      KMS requests per second the job may send (default 10000; "unlimited")
  --workers N          worker threads (default: one per 3,000 of quota, at most one per core)
  --mode MODE          reencrypt (default) or decrypt-encrypt
  --kms-transport T    KMS client: signed-undici (default), sdk-undici or sdk
  --batch-size N       rows per worker task (default 50)
  --max-in-flight N    KMS requests in flight; size to quota x round-trip seconds
  --drain-timeout S    seconds to finish in-flight work after SIGTERM/SIGINT (default 30)
  --table-config FILE  JSON mapping of an application's vault table: {"name", "key", "matter",
                       "token", "wrappedKey", "kekId", "rotatedAt"}; the key column must be bigint
  --json               print the summary as one JSON object on stdout

kms-emulator options:
  --port P  --host H  --quota RPS  --latency-ms MS  --jitter-ms MS  --state FILE  --request-log FILE

Exit status: 0 done, 1 failed, 2 usage error, 3 partial (rows quarantined), 75 scope busy.
`;

async function commandInit(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { 'database-url': { type: 'string' } } });
  const applied = await withClient(databaseUrlFrom(values['database-url']), (client) => initSchema(client, logger));
  console.log(applied.length === 0 ? `schema is up to date (version ${schemaVersion})` : `applied schema versions ${applied.join(', ')}`);
  return exitCodes.done;
}

async function commandSeed(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      ...connectionOptions,
      matters: { type: 'string' },
      rows: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const matters = parseInteger(requireString(values.matters, '--matters', 'give the number of matters, for example --matters 20'), '--matters', 1);
  const rows = parseInteger(requireString(values.rows, '--rows', 'give the number of rows, for example --rows 100000'), '--rows', 0, 0);
  const endpoint = values['kms-endpoint'];
  const kms = createKmsClient({ endpoint, region: values['kms-region'] });
  try {
    const result = await withClient(databaseUrlFrom(values['database-url']), async (client) => {
      await initSchema(client, logger);
      return seedVault({ client, kms, emulatorUrl: endpoint, matters, rows, logger });
    });
    const report = { rows: result.rows, firstKey: result.firstKey, lastKey: result.lastKey, keks: Object.fromEntries(result.keks) };
    console.log(values.json === true ? JSON.stringify(report) : `seeded ${result.rows} rows over ${result.keks.size} matters`);
  } finally {
    kms.destroy();
  }
  return exitCodes.done;
}

function printSummary(summary: RotateSummary, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(summary));
    return;
  }
  console.log(
    `${summary.status}: scanned ${summary.scanned}, rewrapped ${summary.rewrapped}, conflicts ${summary.conflicts}, ` +
      `failed ${summary.failed}, quarantined ${summary.quarantined}, throttled ${summary.throttled}, ` +
      `${summary.seconds}s, ${summary.rate} rows/s (job ${summary.jobId})`,
  );
  if (summary.error !== undefined) console.error(`error: ${summary.error}`);
}

async function commandRotate(argv: string[], logger: Logger): Promise<number> {
  if (argv.some((arg) => arg === '--job' || arg.startsWith('--job='))) return commandRotateJob(argv, logger);
  const { values } = parseArgs({
    args: argv,
    options: {
      ...connectionOptions,
      'kms-quota': { type: 'string' },
      matter: { type: 'string', multiple: true },
      all: { type: 'boolean' },
      to: { type: 'string' },
      workers: { type: 'string' },
      mode: { type: 'string' },
      'kms-transport': { type: 'string' },
      'batch-size': { type: 'string' },
      'max-in-flight': { type: 'string' },
      'drain-timeout': { type: 'string' },
      'table-config': { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const matters = values.matter ?? [];
  if (values.all === true && matters.length > 0) throw new UsageError('give either --all or --matter, not both');
  if (values.all !== true && matters.length === 0) throw new UsageError('missing scope: pass --matter ID (repeatable) or --all');
  const target = requireString(values.to, '--to', 'name the target KEK by key id, ARN or alias, for example --to alias/rewrap/tenant-a');
  const mode = values.mode ?? 'reencrypt';
  if (mode !== 'reencrypt' && mode !== 'decrypt-encrypt') {
    throw new UsageError(`invalid --mode "${mode}": expected reencrypt or decrypt-encrypt`);
  }
  const kmsTransport = values['kms-transport'] ?? defaultKmsTransport;
  if (!(kmsTransportNames as readonly string[]).includes(kmsTransport)) {
    throw new UsageError(`invalid --kms-transport "${kmsTransport}": expected ${kmsTransportNames.join(', ')}`);
  }
  const drainSeconds = parsePositive(values['drain-timeout'], '--drain-timeout', 30);

  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) return;
    logger.warn({ event: 'kek.rotate.signal', signal, drainTimeoutSeconds: drainSeconds }, 'stopping: finishing in-flight work');
    controller.abort();
    setTimeout(() => {
      logger.error({ event: 'kek.rotate.drain-timeout', drainTimeoutSeconds: drainSeconds }, 'drain timed out; exiting');
      process.exit(exitCodes.failed);
    }, drainSeconds * 1000).unref();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  const databaseUrl = databaseUrlFrom(values['database-url']);
  const table = values['table-config'] === undefined ? undefined : await loadTableConfig(values['table-config']);
  // Rotation start and finish go into the audit trail, MACed by the KMS.
  const auditPool = new pg.Pool({ connectionString: databaseUrl, max: 1, application_name: 'rewrap-audit' });
  auditPool.on('error', (error) => logger.warn({ event: 'audit.pool.error', err: error }, 'idle audit connection failed'));
  // The audit's GenerateMac calls share the KMS quota with the rotation, so the SDK retries them when throttled.
  const auditKms = createKmsClient({ endpoint: values['kms-endpoint'], region: values['kms-region'], maxSockets: 2, maxAttempts: 6 });
  const trail = new AuditTrail({ pool: auditPool, kms: auditKms, logger });
  const summary = await rotate({
    databaseUrl,
    table,
    audit: async (event) => {
      await trail.append(event.type, auditDetails(event));
    },
    matters: values.all === true ? null : matters,
    target,
    kmsEndpoint: values['kms-endpoint'],
    kmsRegion: values['kms-region'],
    quota: parsePositive(values['kms-quota'], '--kms-quota', 10_000, true),
    workers: values.workers === undefined ? undefined : parseInteger(values.workers, '--workers', 1),
    mode,
    kmsTransport: kmsTransport as KmsTransportName,
    batchSize: values['batch-size'] === undefined ? undefined : parseInteger(values['batch-size'], '--batch-size', 1),
    maxInFlight: values['max-in-flight'] === undefined ? undefined : parseInteger(values['max-in-flight'], '--max-in-flight', 1),
    logger,
    signal: controller.signal,
  }).finally(async () => {
    auditKms.destroy();
    await auditPool.end();
  });
  printSummary(summary, values.json === true);
  switch (summary.status) {
    case 'done':
      return exitCodes.done;
    case 'partial':
      return exitCodes.partial;
    default:
      return exitCodes.failed;
  }
}

async function commandEmulator(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      quota: { type: 'string' },
      'latency-ms': { type: 'string' },
      'jitter-ms': { type: 'string' },
      state: { type: 'string' },
      'request-log': { type: 'string' },
    },
  });
  const emulator = await startEmulator({
    host: values.host ?? '127.0.0.1',
    port: values.port === undefined ? 0 : parseInteger(values.port, '--port', 0, 0),
    quota: parsePositive(values.quota, '--quota', 10_000, true),
    latencyMs: values['latency-ms'] === undefined ? 0 : parseInteger(values['latency-ms'], '--latency-ms', 0, 0),
    jitterMs: values['jitter-ms'] === undefined ? 0 : parseInteger(values['jitter-ms'], '--jitter-ms', 0, 0),
    statePath: values.state,
    requestLogPath: values['request-log'],
  });
  logger.info({ event: 'kms-emulator.start', url: emulator.url }, 'KMS emulator listening');
  console.log(emulator.url);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  await emulator.close();
  logger.info({ event: 'kms-emulator.stop', url: emulator.url }, 'KMS emulator stopped');
  return exitCodes.done;
}

const commands: Record<string, (argv: string[], logger: Logger) => Promise<number>> = {
  init: commandInit,
  seed: commandSeed,
  rotate: commandRotate,
  'kms-emulator': commandEmulator,
  ...quarantineCommands,
  ...fleetCommands,
  ...lifecycleCommands,
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    console.log(help);
    return name === undefined ? exitCodes.usage : exitCodes.done;
  }
  const command = commands[name];
  if (command === undefined) {
    console.error(`unknown command "${name}"; run "rewrap help" for the list`);
    return exitCodes.usage;
  }
  const logger = createLogger();
  try {
    return await command(rest, logger);
  } catch (error) {
    if (error instanceof UsageError || error instanceof RotateUsageError || error instanceof TableConfigError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      console.error(`rewrap ${name}: ${(error as Error).message}`);
      return exitCodes.usage;
    }
    if (error instanceof ScopeBusyError) {
      console.error(`rewrap ${name}: ${error.message}`);
      return exitCodes.busy;
    }
    logger.error({ event: `${name}.error`, err: error }, `${name} failed`);
    console.error(`rewrap ${name}: ${(error as Error).message}`);
    return exitCodes.failed;
  } finally {
    logger.flush();
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(error);
    process.exitCode = exitCodes.failed;
  },
);
