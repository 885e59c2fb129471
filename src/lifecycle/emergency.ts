import { CreateKeyCommand, DisableKeyCommand, ListResourceTagsCommand, ScheduleKeyDeletionCommand, UpdateAliasCommand } from '@aws-sdk/client-kms';
import { rotate, type RotateAuditEvent, type RotateSummary } from '../rotate/engine.js';
import type { KeyAccessControl } from './access.js';
import { describeKey, kmsPrincipal, type LifecycleContext } from './context.js';
import { exposureReport, type ExposureReport, type KmsEventSource } from './exposure.js';
import { checkPendingDays, maxPendingDays } from './retire.js';
import { mattersOnKek } from './rows.js';
import { verifyRotation } from './verify.js';

/** The runbook's steps, in order. A rerun skips the steps recorded as done. */
export const emergencySteps = ['revoke', 'replace', 'rewrap', 'verify', 'retire', 'report'] as const;
export type EmergencyStep = (typeof emergencySteps)[number];

export interface EmergencyOptions {
  compromised: string;
  since: Date;
  access: KeyAccessControl;
  events: KmsEventSource;
  /** KMS requests per second for the rewrap step. */
  quota: number;
  pendingDays?: number | undefined;
  sample?: number | undefined;
  workers?: number | undefined;
  /** Stops after this step, for tests and for operators who want to inspect each step. */
  stopAfter?: EmergencyStep | undefined;
}

export interface EmergencyResult {
  runId: string;
  compromisedArn: string;
  replacementArn: string | null;
  /** Steps done by this call; steps done by an earlier call are left out. */
  ran: EmergencyStep[];
  resumedFrom: EmergencyStep | null;
  status: 'done' | 'stopped';
  report: ExposureReport | null;
}

/** A step that failed; the run resumes at it on the next call. */
export class EmergencyStepError extends Error {
  override name = 'EmergencyStepError';
}

type StepDetail = Record<string, unknown>;

/**
 * Runs the compromised-key runbook: revoke application access to K, create
 * a replacement, rewrap every DEK under K, verify, disable K and schedule
 * its deletion, and write the exposure report. Each step is recorded in
 * `rewrap.emergency_steps`, so that a rerun with the same key resumes at the
 * first step not done.
 */
export async function runEmergency(context: LifecycleContext, options: EmergencyOptions): Promise<EmergencyResult> {
  const pendingDays = options.pendingDays ?? maxPendingDays;
  checkPendingDays(pendingDays);
  const metadata = await describeKey(context.kms, options.compromised);
  if (metadata?.Arn === undefined) {
    throw new Error(`compromised key "${options.compromised}" was not found in the KMS; pass its key id, ARN or alias`);
  }
  const compromisedArn = metadata.Arn;
  const { pool, logger } = context;

  const open = await pool.query<{ id: string; since: Date }>(
    `SELECT r.id::text AS id, r.since FROM rewrap.emergency_runs r WHERE r.compromised_kek = $1 AND r.status <> 'done' ORDER BY r.id DESC LIMIT 1`,
    [compromisedArn],
  );
  let runId: string;
  let since = options.since;
  if (open.rows[0] !== undefined) {
    runId = open.rows[0].id;
    // The first run's window is kept, so that the report covers the same period however often the runbook resumes.
    since = open.rows[0].since;
  } else {
    const finished = await pool.query<{ id: string }>(
      `SELECT r.id::text AS id FROM rewrap.emergency_runs r WHERE r.compromised_kek = $1 AND r.status = 'done' ORDER BY r.id DESC LIMIT 1`,
      [compromisedArn],
    );
    if (finished.rows[0] !== undefined && metadata.KeyState === 'PendingDeletion') {
      throw new Error(
        `emergency run ${finished.rows[0].id} already replaced ${compromisedArn} and scheduled its deletion; ` +
          `run "rewrap exposure --kek ${compromisedArn}" for a newer report`,
      );
    }
    const inserted = await pool.query<{ id: string }>(
      `INSERT INTO rewrap.emergency_runs (compromised_kek, since, status) VALUES ($1, $2, 'running') RETURNING id::text`,
      [compromisedArn, options.since],
    );
    runId = inserted.rows[0]!.id;
    await context.audit.append('emergency.start', { runId, compromisedArn, since: options.since.toISOString() });
  }

  const recorded = await pool.query<{ step: EmergencyStep; status: string; detail: StepDetail }>(
    'SELECT step, status, detail FROM rewrap.emergency_steps WHERE run_id = $1',
    [runId],
  );
  const done = new Map<EmergencyStep, StepDetail>();
  for (const row of recorded.rows) if (row.status === 'done') done.set(row.step, row.detail);
  const firstPending = emergencySteps.find((step) => !done.has(step)) ?? null;
  const resumedFrom = done.size > 0 ? firstPending : null;
  logger.info({ event: 'emergency.start', runId, compromisedArn, resumeAt: firstPending }, 'emergency runbook started');

  const ran: EmergencyStep[] = [];
  let replacementArn = (done.get('replace')?.replacementArn as string | undefined) ?? null;
  let report = (done.get('report')?.report as ExposureReport | undefined) ?? null;

  const steps: Record<EmergencyStep, () => Promise<StepDetail>> = {
    revoke: async () => {
      const principal = await kmsPrincipal(context.kms);
      await options.access.restrictTo(compromisedArn, [principal]);
      return { allowedPrincipals: [principal] };
    },
    replace: async () => {
      replacementArn = await createReplacement(context, compromisedArn);
      return { replacementArn };
    },
    rewrap: async () => {
      if (replacementArn === null) throw new Error('no replacement key is recorded for this run');
      return rewrapAll(context, compromisedArn, replacementArn, options);
    },
    verify: async () => {
      const result = await verifyRotation(context, { matters: null, kek: compromisedArn, sample: options.sample });
      if (!result.ok) {
        throw new Error(`verification failed: ${result.remaining.reduce((sum, count) => sum + count.rows, 0)} rows still on ${compromisedArn}, ${result.failures.length} sampled rows did not unwrap`);
      }
      return { sampled: result.sampled };
    },
    retire: async () => {
      const current = await describeKey(context.kms, compromisedArn);
      if (current?.KeyState === 'Enabled') await context.kms.send(new DisableKeyCommand({ KeyId: compromisedArn }));
      let deletionDate = current?.DeletionDate?.toISOString() ?? null;
      if (current !== null && current.KeyState !== 'PendingDeletion') {
        const scheduled = await context.kms.send(new ScheduleKeyDeletionCommand({ KeyId: compromisedArn, PendingWindowInDays: pendingDays }));
        deletionDate = scheduled.DeletionDate?.toISOString() ?? null;
      }
      await pool.query(
        `INSERT INTO rewrap.keys (key_arn, key_class, retired_at, replaced_by) VALUES ($1, 'tenant', now(), $2)
         ON CONFLICT (key_arn) DO UPDATE SET retired_at = COALESCE(rewrap.keys.retired_at, now()), replaced_by = $2`,
        [compromisedArn, replacementArn],
      );
      return { pendingDays, deletionDate };
    },
    report: async () => {
      report = await exposureReport(context, options.events, compromisedArn, since, new Date());
      return { report };
    },
  };

  for (const step of emergencySteps) {
    if (done.has(step)) continue;
    logger.info({ event: 'emergency.step.start', runId, step }, `emergency step ${step} started`);
    let detail: StepDetail;
    try {
      detail = await steps[step]();
    } catch (error) {
      const message = (error as Error).message;
      logger.error({ event: 'emergency.step.error', runId, step, err: error }, `emergency step ${step} failed`);
      await pool.query(
        `INSERT INTO rewrap.emergency_steps (run_id, step, status, error) VALUES ($1, $2, 'failed', $3)
         ON CONFLICT (run_id, step) DO UPDATE SET status = 'failed', error = $3`,
        [runId, step, message],
      );
      await context.audit.append('emergency.step.failed', { runId, step, error: message });
      throw new EmergencyStepError(`emergency step ${step} for ${compromisedArn} failed: ${message}; fix the cause and rerun the same command to resume at this step`);
    }
    await pool.query(
      `INSERT INTO rewrap.emergency_steps (run_id, step, status, detail, error, finished_at) VALUES ($1, $2, 'done', $3, NULL, now())
       ON CONFLICT (run_id, step) DO UPDATE SET status = 'done', detail = $3, error = NULL, finished_at = now()`,
      [runId, step, JSON.stringify(detail)],
    );
    // The report can be long, so the audit record names the step only.
    await context.audit.append('emergency.step', { runId, step, compromisedArn, ...(step === 'report' ? {} : detail) });
    logger.info({ event: 'emergency.step.done', runId, step }, `emergency step ${step} done`);
    ran.push(step);
    if (options.stopAfter === step && step !== 'report') {
      return { runId, compromisedArn, replacementArn, ran, resumedFrom, status: 'stopped', report };
    }
  }

  await pool.query(`UPDATE rewrap.emergency_runs SET status = 'done', finished_at = now() WHERE id = $1`, [runId]);
  await context.audit.append('emergency.finish', { runId, compromisedArn, replacementArn });
  logger.info({ event: 'emergency.done', runId, compromisedArn, replacementArn }, 'emergency runbook finished');
  return { runId, compromisedArn, replacementArn, ran, resumedFrom, status: 'done', report };
}

/** Creates the replacement key with the compromised key's matter tag and points the matter alias at it. */
async function createReplacement(context: LifecycleContext, compromisedArn: string): Promise<string> {
  const tags = (await context.kms.send(new ListResourceTagsCommand({ KeyId: compromisedArn }))).Tags ?? [];
  const matterTag = tags.find((tag) => tag.TagKey === 'matter');
  const created = await context.kms.send(
    new CreateKeyCommand({
      Description: `rewrap replacement for compromised key ${compromisedArn}`,
      Tags: [...(matterTag === undefined ? [] : [matterTag]), { TagKey: 'rewrap:replaces', TagValue: compromisedArn.slice(-36) }],
    }),
  );
  const replacementArn = created.KeyMetadata?.Arn;
  if (replacementArn === undefined) throw new Error(`CreateKey for the replacement of ${compromisedArn} returned no ARN`);

  const record = await context.pool.query<{ key_class: 'tenant' | 'matter'; matter_id: string | null; alias_name: string | null }>(
    'SELECT key_class, matter_id, alias_name FROM rewrap.keys WHERE key_arn = $1',
    [compromisedArn],
  );
  const previous = record.rows[0];
  // Retire the old record first: a matter has at most one live KEK record.
  await context.pool.query('UPDATE rewrap.keys SET retired_at = now(), replaced_by = $2 WHERE key_arn = $1', [compromisedArn, replacementArn]);
  await context.pool.query('INSERT INTO rewrap.keys (key_arn, key_class, matter_id, alias_name) VALUES ($1, $2, $3, $4)', [
    replacementArn,
    previous?.key_class ?? (matterTag === undefined ? 'tenant' : 'matter'),
    previous?.matter_id ?? matterTag?.TagValue ?? null,
    previous?.alias_name ?? null,
  ]);
  if (previous?.alias_name !== undefined && previous.alias_name !== null) {
    await context.kms.send(new UpdateAliasCommand({ AliasName: previous.alias_name, TargetKeyId: replacementArn }));
  }
  context.logger.info({ event: 'emergency.replace', compromisedArn, replacementArn }, 'created replacement key');
  return replacementArn;
}

/** Rewraps every row under the compromised key, table by table, scoped to the matters that have rows on it. */
async function rewrapAll(context: LifecycleContext, compromisedArn: string, replacementArn: string, options: EmergencyOptions): Promise<StepDetail> {
  const jobs: Array<{ table: string; jobId: string; rewrapped: number }> = [];
  for (const table of context.tables) {
    const matters = await mattersOnKek(context.pool, [table], compromisedArn);
    if (matters.length === 0) continue;
    const summary: RotateSummary = await rotate({
      databaseUrl: context.databaseUrl,
      table,
      matters,
      target: replacementArn,
      kmsEndpoint: context.kmsEndpoint,
      kmsRegion: context.kmsRegion,
      quota: options.quota,
      workers: options.workers,
      logger: context.logger,
      audit: (event) => context.audit.append(event.type, auditDetails(event)).then(() => undefined),
    });
    if (summary.status !== 'done') {
      throw new Error(`rotation job ${summary.jobId} of ${table.name} ended ${summary.status}${summary.error === undefined ? '' : `: ${summary.error}`}`);
    }
    jobs.push({ table: table.name, jobId: summary.jobId, rewrapped: summary.rewrapped });
  }
  return { jobs };
}

/** Selects the fields of a rotation event that go into the audit trail. */
export function auditDetails(event: RotateAuditEvent): Record<string, unknown> {
  if (event.type === 'rotate.start') {
    return { jobId: event.jobId, table: event.table, matters: event.matters ?? 'all', target: event.target };
  }
  const { summary } = event;
  return {
    jobId: event.jobId,
    table: event.table,
    matters: event.matters ?? 'all',
    status: summary.status,
    target: summary.target,
    scanned: summary.scanned,
    rewrapped: summary.rewrapped,
    failed: summary.failed,
    quarantined: summary.quarantined,
    error: summary.error,
  };
}
