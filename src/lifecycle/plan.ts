import { ReEncryptCommand } from '@aws-sdk/client-kms';
import { quoteVaultTable } from '../db/table.js';
import { rowContext } from '../envelope.js';
import { describeKey, type LifecycleContext } from './context.js';
import { checkMatterId, dedicatedMatter } from './keys.js';
import { rowsPerKek } from './rows.js';

export interface PlanOptions {
  matter: string;
  target: string;
  /** KMS requests per second the rotation may send. */
  quota: number;
  /**
   * Allows moving the matter's DEKs under a KEK dedicated to another
   * matter. Both matters must be named: `from` must equal `matter` and `to`
   * the target key's matter.
   */
  crossMatter?: { from: string; to: string } | undefined;
}

export interface PlanCheck {
  name: string;
  ok: boolean;
  detail: string;
}

export interface RotationPlan {
  matter: string;
  target: string;
  targetArn: string | null;
  sources: Array<{ table: string; kekArn: string; rows: number }>;
  rows: number;
  /** Rows divided by the quota: one ReEncrypt per row, with no allowance for throttling or retries. */
  estimatedSeconds: number;
  checks: PlanCheck[];
  warnings: string[];
  /** True when every check passed. Warnings do not change it. */
  ok: boolean;
}

/**
 * Dry run of `rotate --matter M --to K`: counts rows per source KEK, checks
 * DescribeKey on every key and ReEncrypts one row without writing it back.
 */
export async function planRotation(context: LifecycleContext, options: PlanOptions): Promise<RotationPlan> {
  checkMatterId(options.matter);
  const checks: PlanCheck[] = [];
  const warnings: string[] = [];
  context.logger.info({ event: 'plan.start', matter: options.matter, target: options.target }, 'planning rotation');

  const sources = await rowsPerKek(context.pool, context.tables, [options.matter]);
  const rows = sources.reduce((sum, source) => sum + source.rows, 0);

  let targetArn: string | null = null;
  try {
    const metadata = await describeKey(context.kms, options.target);
    if (metadata?.Arn === undefined) {
      checks.push({ name: 'DescribeKey target', ok: false, detail: `target key "${options.target}" was not found` });
    } else {
      targetArn = metadata.Arn;
      checks.push({ name: 'DescribeKey target', ok: true, detail: `${metadata.Arn} is ${metadata.KeyState ?? 'in an unknown state'}` });
      if (metadata.KeyState !== 'Enabled') warnings.push(`target key ${metadata.Arn} is ${metadata.KeyState ?? 'not enabled'}; enable it or choose another target`);
    }
  } catch (error) {
    checks.push({ name: 'DescribeKey target', ok: false, detail: `${(error as Error).name}: ${(error as Error).message}` });
  }

  for (const kekArn of new Set(sources.map((source) => source.kekArn))) {
    try {
      const metadata = await describeKey(context.kms, kekArn);
      if (metadata === null) {
        checks.push({ name: 'DescribeKey source', ok: false, detail: `source key ${kekArn} was not found; its rows cannot be rewrapped` });
        continue;
      }
      checks.push({ name: 'DescribeKey source', ok: true, detail: `${kekArn} is ${metadata.KeyState ?? 'in an unknown state'}` });
      if (metadata.KeyState === 'PendingDeletion') {
        warnings.push(`source key ${kekArn} is pending deletion on ${metadata.DeletionDate?.toISOString() ?? 'an unknown date'}; cancel the deletion before rotating`);
      } else if (metadata.KeyState !== 'Enabled') {
        warnings.push(`source key ${kekArn} is ${metadata.KeyState ?? 'not enabled'}; its rows will be quarantined unless it is enabled`);
      }
    } catch (error) {
      checks.push({ name: 'DescribeKey source', ok: false, detail: `${kekArn}: ${(error as Error).name}: ${(error as Error).message}` });
    }
  }

  if (targetArn !== null) {
    const owner = await dedicatedMatter(context.pool, context.kms, targetArn);
    if (owner !== null && owner !== options.matter) {
      const allowed = options.crossMatter?.from === options.matter && options.crossMatter.to === owner;
      checks.push({
        name: 'encryption context',
        ok: allowed,
        detail: allowed
          ? `cross-matter rewrap from ${options.matter} to ${owner}'s KEK allowed explicitly`
          : `target key ${targetArn} is dedicated to matter ${owner}, not ${options.matter}; pass --cross-matter ${options.matter}:${owner} to allow it`,
      });
    }
    await checkOneReEncrypt(context, options.matter, targetArn, checks);
  }

  const estimatedSeconds = Number.isFinite(options.quota) && options.quota > 0 ? Math.ceil((rows / options.quota) * 10) / 10 : 0;
  const plan: RotationPlan = {
    matter: options.matter,
    target: options.target,
    targetArn,
    sources,
    rows,
    estimatedSeconds,
    checks,
    warnings,
    ok: checks.every((check) => check.ok),
  };
  context.logger.info({ event: 'plan.done', matter: options.matter, rows, ok: plan.ok, warnings: warnings.length }, 'plan finished');
  return plan;
}

/** ReEncrypts the matter's first row not yet on the target and drops the result, to prove the permissions. */
async function checkOneReEncrypt(context: LifecycleContext, matter: string, targetArn: string, checks: PlanCheck[]): Promise<void> {
  for (const table of context.tables) {
    const q = quoteVaultTable(table);
    const { rows } = await context.pool.query<{ key: string; token: string; wrapped: Buffer; kek: string }>(
      `SELECT ${q.key}::text AS key, ${q.token} AS token, ${q.wrappedKey} AS wrapped, ${q.kekId} AS kek
       FROM ${q.table} WHERE ${q.matter} = $1 AND ${q.kekId} <> $2 ORDER BY ${q.key} LIMIT 1`,
      [matter, targetArn],
    );
    const row = rows[0];
    if (row === undefined) continue;
    const encryptionContext = rowContext(matter, row.token);
    try {
      await context.kms.send(
        new ReEncryptCommand({
          CiphertextBlob: row.wrapped,
          SourceKeyId: row.kek,
          SourceEncryptionContext: encryptionContext,
          DestinationKeyId: targetArn,
          DestinationEncryptionContext: encryptionContext,
        }),
      );
      checks.push({ name: 'ReEncrypt one row', ok: true, detail: `row ${row.key} of ${table.name} rewraps from ${row.kek}; result discarded` });
    } catch (error) {
      const name = (error as Error).name;
      context.logger.warn({ event: 'plan.reencrypt.error', table: table.name, key: row.key, sourceKek: row.kek, error: name }, 'trial ReEncrypt failed');
      checks.push({ name: 'ReEncrypt one row', ok: false, detail: `row ${row.key} of ${table.name} from ${row.kek}: ${name}` });
    }
    return;
  }
  checks.push({ name: 'ReEncrypt one row', ok: true, detail: 'no row of the matter is off the target; nothing to rewrap' });
}
