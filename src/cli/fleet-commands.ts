import { parseArgs } from 'node:util';
import { initSchema } from '../db/schema.js';
import { createJob, readJobStatus, type JobStatusReport } from '../fleet/jobs.js';
import { runFleetWorker } from '../fleet/runner.js';
import type { Logger } from '../log.js';
import { databaseUrlFrom, parseInteger, parsePositive, requireString, UsageError } from './args.js';
import { withClient } from './database.js';

const defaultLeaseSeconds = 30;

/** `rewrap job create (--matter M... | --all) --to KEY [--partitions N]`: prints the new job's id. */
async function commandJob(argv: string[], logger: Logger): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'create') throw new UsageError(`unknown job subcommand "${sub ?? ''}": expected "job create"`);
  const { values } = parseArgs({
    args: rest,
    options: {
      'database-url': { type: 'string' },
      matter: { type: 'string', multiple: true },
      all: { type: 'boolean' },
      to: { type: 'string' },
      partitions: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const matters = values.matter ?? [];
  if (values.all === true && matters.length > 0) throw new UsageError('give either --all or --matter, not both');
  if (values.all !== true && matters.length === 0) throw new UsageError('missing scope: pass --matter ID (repeatable) or --all');
  const target = requireString(values.to, '--to', 'name the target KEK by key id, ARN or alias, for example --to alias/rewrap/tenant-a');
  const partitions = parseInteger(values.partitions, '--partitions', 16, 1);
  const created = await withClient(databaseUrlFrom(values['database-url']), async (client) => {
    await initSchema(client, logger);
    return createJob({ client, matters: values.all === true ? null : matters, target, partitions });
  });
  logger.info({ event: 'fleet.job.create', fleetJobId: created.jobId, partitions: created.partitions.length, target }, 'partitioned job created');
  console.log(values.json === true ? JSON.stringify(created) : created.jobId);
  return 0;
}

/** `rewrap rotate --job J ...`: one process of a partitioned job. */
export async function commandRotateJob(argv: string[], logger: Logger): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      job: { type: 'string' },
      redis: { type: 'string' },
      'database-url': { type: 'string' },
      'kms-endpoint': { type: 'string' },
      'kms-region': { type: 'string' },
      'kms-quota': { type: 'string' },
      'lease-seconds': { type: 'string' },
      workers: { type: 'string' },
      mode: { type: 'string' },
      'batch-size': { type: 'string' },
      'max-in-flight': { type: 'string' },
      'drain-timeout': { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const jobId = requireString(values.job, '--job', 'give the id that "rewrap job create" printed');
  if (!/^[0-9]+$/.test(jobId)) throw new UsageError(`invalid --job "${jobId}": expected a job id such as 42`);
  const mode = values.mode ?? 'reencrypt';
  if (mode !== 'reencrypt' && mode !== 'decrypt-encrypt') throw new UsageError(`invalid --mode "${mode}": expected reencrypt or decrypt-encrypt`);
  const quota = parsePositive(values['kms-quota'], '--kms-quota', 10_000);
  const leaseSeconds = parsePositive(values['lease-seconds'], '--lease-seconds', defaultLeaseSeconds);
  const drainSeconds = parsePositive(values['drain-timeout'], '--drain-timeout', 30);

  const controller = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) return;
    logger.warn({ event: 'fleet.worker.signal', fleetJobId: jobId, signal, drainTimeoutSeconds: drainSeconds }, 'stopping: finishing in-flight work');
    controller.abort();
    setTimeout(() => {
      logger.error({ event: 'fleet.worker.drain-timeout', fleetJobId: jobId, drainTimeoutSeconds: drainSeconds }, 'drain timed out; exiting');
      process.exit(1);
    }, drainSeconds * 1000).unref();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  const summary = await runFleetWorker({
    databaseUrl: databaseUrlFrom(values['database-url']),
    jobId,
    redisUrl: values.redis ?? null,
    quota,
    kmsEndpoint: values['kms-endpoint'],
    kmsRegion: values['kms-region'],
    mode,
    workers: parseInteger(values.workers, '--workers', 1, 1),
    batchSize: values['batch-size'] === undefined ? undefined : parseInteger(values['batch-size'], '--batch-size', 1),
    maxInFlight: values['max-in-flight'] === undefined ? undefined : parseInteger(values['max-in-flight'], '--max-in-flight', 1),
    leaseMs: leaseSeconds * 1000,
    logger,
    signal: controller.signal,
  });
  if (values.json === true) console.log(JSON.stringify(summary));
  else console.log(`job ${summary.jobId} ${summary.jobStatus}: this process finished ${summary.partitions} partitions, rewrapped ${summary.rewrapped}`);
  if (summary.interrupted) return 1;
  if (summary.jobStatus === 'failed') return 1;
  if (summary.jobStatus === 'partial') return 3;
  return 0;
}

function printStatus(report: JobStatusReport): void {
  const eta = report.etaSeconds === null ? 'unknown' : `${report.etaSeconds}s`;
  console.log(
    `job ${report.jobId} ${report.status}: rewrapped ${report.rewrapped} of about ${report.rowsAtCreate}, ` +
      `${report.rate} rows/s, ETA ${eta}, ${report.liveWorkers} live processes`,
  );
  console.log('partition  status    owner                              lease  rewrapped/rows  checkpoint');
  for (const p of report.partitions) {
    const lease = p.leaseSeconds === null ? '-' : `${p.leaseSeconds}s`;
    console.log(
      `${String(p.partition).padEnd(10)} ${p.status.padEnd(9)} ${(p.owner ?? '-').padEnd(34)} ${lease.padEnd(6)} ` +
        `${`${p.rewrapped}/${p.rowsAtCreate}`.padEnd(15)} ${p.checkpoint ?? '-'}`,
    );
  }
}

/** `rewrap status --job J [--json]`: partitions with owners, lease expiry and progress, and the job's rate and ETA. */
async function commandStatus(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      job: { type: 'string' },
      'database-url': { type: 'string' },
      'lease-seconds': { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const jobId = requireString(values.job, '--job', 'give the id that "rewrap job create" printed');
  if (!/^[0-9]+$/.test(jobId)) throw new UsageError(`invalid --job "${jobId}": expected a job id such as 42`);
  const leaseMs = parsePositive(values['lease-seconds'], '--lease-seconds', defaultLeaseSeconds) * 1000;
  const report = await withClient(databaseUrlFrom(values['database-url']), (client) => readJobStatus(client, jobId, leaseMs));
  if (report === null) throw new UsageError(`job ${jobId} was not found`);
  if (values.json === true) console.log(JSON.stringify(report));
  else printStatus(report);
  return 0;
}

export const fleetCommands: Record<string, (argv: string[], logger: Logger) => Promise<number>> = {
  job: commandJob,
  status: commandStatus,
};
