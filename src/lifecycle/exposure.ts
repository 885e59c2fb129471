import type { LifecycleContext } from './context.js';

/** The fields of a CloudTrail KMS event that the exposure report reads. */
export interface KmsTrailEvent {
  eventTime: string;
  eventName: string;
  userIdentity: { accessKeyId?: string; principalId?: string; arn?: string };
  requestParameters: Record<string, unknown> | null;
  resources?: Array<{ ARN: string }> | undefined;
  errorCode?: string | undefined;
}

/** Source of KMS request events. */
export interface KmsEventSource {
  /** Events under the key `kekArn` in `[since, until)`, in any order. */
  events(kekArn: string, since: Date, until: Date): Promise<KmsTrailEvent[]>;
}

/** Operations that hand the caller a plaintext DEK under the key. */
const exposingOperations = new Set(['Decrypt', 'GenerateDataKey']);

export interface ExposureEntry {
  matter: string;
  token: string;
  principal: string;
  operation: string;
  count: number;
  first: string;
  last: string;
}

export interface ExposureReport {
  kekArn: string;
  since: string;
  until: string;
  /** Successful Decrypt and GenerateDataKey calls under the key, per matter, token, principal and operation. */
  exposures: ExposureEntry[];
  /** Calls under the key that the KMS rejected, per principal and error. */
  denied: Array<{ principal: string; operation: string; error: string; count: number }>;
  matters: string[];
  principals: string[];
}

function principalOf(event: KmsTrailEvent): string {
  return event.userIdentity.accessKeyId ?? event.userIdentity.arn ?? event.userIdentity.principalId ?? 'unknown';
}

function usesKey(event: KmsTrailEvent, kekArn: string): boolean {
  return (event.resources ?? []).some((resource) => resource.ARN === kekArn);
}

/** Builds the exposure report of one key from KMS request events. */
export function buildExposureReport(kekArn: string, since: Date, until: Date, events: KmsTrailEvent[]): ExposureReport {
  const exposures = new Map<string, ExposureEntry>();
  const denied = new Map<string, { principal: string; operation: string; error: string; count: number }>();
  for (const event of [...events].sort((a, b) => a.eventTime.localeCompare(b.eventTime))) {
    if (!usesKey(event, kekArn)) continue;
    const principal = principalOf(event);
    if (event.errorCode !== undefined) {
      const key = `${principal}\u0000${event.eventName}\u0000${event.errorCode}`;
      const entry = denied.get(key) ?? { principal, operation: event.eventName, error: event.errorCode, count: 0 };
      entry.count += 1;
      denied.set(key, entry);
      continue;
    }
    if (!exposingOperations.has(event.eventName)) continue;
    const context = (event.requestParameters?.encryptionContext ?? {}) as Record<string, unknown>;
    const matter = typeof context.matter === 'string' ? context.matter : '(no matter in context)';
    const token = typeof context.token === 'string' ? context.token : '(no token in context)';
    const key = `${matter}\u0000${token}\u0000${principal}\u0000${event.eventName}`;
    const entry = exposures.get(key) ?? { matter, token, principal, operation: event.eventName, count: 0, first: event.eventTime, last: event.eventTime };
    entry.count += 1;
    entry.last = event.eventTime;
    exposures.set(key, entry);
  }
  const list = [...exposures.values()].sort((a, b) => a.matter.localeCompare(b.matter) || a.token.localeCompare(b.token) || a.principal.localeCompare(b.principal));
  return {
    kekArn,
    since: since.toISOString(),
    until: until.toISOString(),
    exposures: list,
    denied: [...denied.values()],
    matters: [...new Set(list.map((entry) => entry.matter))].sort(),
    principals: [...new Set(list.map((entry) => entry.principal))].sort(),
  };
}

/** Reads the events of the window and builds the report. */
export async function exposureReport(
  context: LifecycleContext,
  source: KmsEventSource,
  kekArn: string,
  since: Date,
  until: Date,
): Promise<ExposureReport> {
  context.logger.info({ event: 'exposure.start', kekArn, since: since.toISOString(), until: until.toISOString() }, 'building exposure report');
  const report = buildExposureReport(kekArn, since, until, await source.events(kekArn, since, until));
  await context.audit.append('exposure.report', {
    kekArn,
    since: report.since,
    until: report.until,
    entries: report.exposures.length,
    matters: report.matters.length,
  });
  context.logger.info({ event: 'exposure.done', kekArn, entries: report.exposures.length, matters: report.matters.length }, 'exposure report built');
  return report;
}

const escapeCell = (value: string) => value.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** Renders the report as markdown: a summary line and one table row per exposure. */
export function exposureMarkdown(report: ExposureReport): string {
  const lines = [
    `# Exposure of ${report.kekArn}`,
    '',
    `Window: ${report.since} to ${report.until}. ${report.exposures.length} matter/token/principal combinations over ${report.matters.length} matters.`,
    '',
    '| matter | token | principal | operation | count | first | last |',
    '| --- | --- | --- | --- | ---: | --- | --- |',
    ...report.exposures.map(
      (entry) =>
        `| ${escapeCell(entry.matter)} | ${escapeCell(entry.token)} | ${escapeCell(entry.principal)} | ${entry.operation} | ${entry.count} | ${entry.first} | ${entry.last} |`,
    ),
  ];
  if (report.denied.length > 0) {
    lines.push('', '| denied principal | operation | error | count |', '| --- | --- | --- | ---: |');
    for (const entry of report.denied) lines.push(`| ${escapeCell(entry.principal)} | ${entry.operation} | ${entry.error} | ${entry.count} |`);
  }
  return lines.join('\n') + '\n';
}
