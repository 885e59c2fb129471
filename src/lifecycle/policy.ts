import { readFile } from 'node:fs/promises';
import { UsageError } from '../cli/args.js';
import { describeKey, type LifecycleContext } from './context.js';
import { dedicatedMatter, recordedKeys, type KeyClass } from './keys.js';
import { rowsPerKek } from './rows.js';

/**
 * A key rotation policy: the maximum age in days per key class, for example
 * `{"maxAgeDays": {"tenant": 365, "matter": 730, "audit-signing": 365}}`.
 * A class left out has no maximum.
 */
export interface KeyPolicy {
  maxAgeDays: Partial<Record<KeyClass, number>>;
}

const keyClasses: KeyClass[] = ['tenant', 'matter', 'audit-signing'];

/** Parses and checks a policy document; throws a UsageError that names the bad field. */
export function parsePolicy(text: string, source: string): KeyPolicy {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`invalid policy ${source}: not JSON (${(error as Error).message})`);
  }
  const maxAgeDays = (value as { maxAgeDays?: unknown } | null)?.maxAgeDays;
  if (typeof maxAgeDays !== 'object' || maxAgeDays === null || Array.isArray(maxAgeDays)) {
    throw new UsageError(`invalid policy ${source}: expected {"maxAgeDays": {"tenant": DAYS, "matter": DAYS, "audit-signing": DAYS}}`);
  }
  for (const [name, days] of Object.entries(maxAgeDays)) {
    if (!keyClasses.includes(name as KeyClass)) {
      throw new UsageError(`invalid policy ${source}: unknown key class "${name}"; expected one of ${keyClasses.join(', ')}`);
    }
    if (typeof days !== 'number' || !Number.isFinite(days) || days < 0) {
      throw new UsageError(`invalid policy ${source}: maxAgeDays.${name} must be a non-negative number of days`);
    }
  }
  return { maxAgeDays: maxAgeDays as KeyPolicy['maxAgeDays'] };
}

export async function loadPolicy(path: string): Promise<KeyPolicy> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read policy file ${path}: ${(error as Error).message}`);
  }
  return parsePolicy(text, path);
}

export interface KeyAge {
  keyArn: string;
  keyClass: KeyClass;
  matter: string | null;
  state: string;
  createdAt: string;
  ageDays: number;
  maxAgeDays: number | null;
  overdue: boolean;
  /** Origin of the entry: a `rewrap.keys` record, or a vault table's KEK column. */
  source: 'record' | 'vault';
}

export interface PolicyCheckResult {
  ok: boolean;
  keys: KeyAge[];
  overdue: KeyAge[];
}

/**
 * Checks every live key against the policy: the keys in `rewrap.keys` that
 * are not retired, and the KEKs named by vault rows that rewrap has no
 * record of (classed as matter KEKs when tagged `matter`, else tenant KEKs).
 * Age comes from the KMS CreationDate, or the record when the KMS has no such key.
 */
export async function checkPolicy(context: LifecycleContext, policy: KeyPolicy, now = new Date()): Promise<PolicyCheckResult> {
  const candidates = new Map<string, { keyClass: KeyClass; matter: string | null; createdAt: Date | null; source: 'record' | 'vault' }>();
  const records = await recordedKeys(context.pool);
  for (const record of records) {
    if (record.retiredAt !== null) continue;
    candidates.set(record.keyArn, { keyClass: record.keyClass, matter: record.matter, createdAt: record.createdAt, source: 'record' });
  }
  const retired = new Set(records.filter((record) => record.retiredAt !== null).map((record) => record.keyArn));
  for (const { kekArn } of await rowsPerKek(context.pool, context.tables, null)) {
    if (candidates.has(kekArn) || retired.has(kekArn)) continue;
    const matter = await dedicatedMatter(context.pool, context.kms, kekArn);
    candidates.set(kekArn, { keyClass: matter === null ? 'tenant' : 'matter', matter, createdAt: null, source: 'vault' });
  }

  const keys: KeyAge[] = [];
  for (const [keyArn, candidate] of candidates) {
    const metadata = await describeKey(context.kms, keyArn);
    const created = metadata?.CreationDate ?? candidate.createdAt;
    if (created === null) {
      context.logger.warn({ event: 'policy.key.unknown', keyArn }, 'key named by vault rows was not found in the KMS; its age is unknown');
      continue;
    }
    const ageDays = (now.getTime() - created.getTime()) / 86_400_000;
    const maxAgeDays = policy.maxAgeDays[candidate.keyClass] ?? null;
    keys.push({
      keyArn,
      keyClass: candidate.keyClass,
      matter: candidate.matter,
      state: metadata?.KeyState ?? 'NotFound',
      createdAt: created.toISOString(),
      ageDays: Math.floor(ageDays * 10) / 10,
      maxAgeDays,
      overdue: maxAgeDays !== null && ageDays > maxAgeDays,
      source: candidate.source,
    });
  }
  const overdue = keys.filter((key) => key.overdue);
  await context.audit.append('policy.check', { keys: keys.length, overdue: overdue.map((key) => key.keyArn) });
  context.logger.info({ event: 'policy.check.done', keys: keys.length, overdue: overdue.length }, 'key policy checked');
  return { ok: overdue.length === 0, keys, overdue };
}
