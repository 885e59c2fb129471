import { DisableKeyCommand, ScheduleKeyDeletionCommand } from '@aws-sdk/client-kms';
import { UsageError } from '../cli/args.js';
import { describeKey, type LifecycleContext } from './context.js';
import { markRetired } from './keys.js';
import { countRowsOnKek, describeCounts, totalRows, type TableCount } from './rows.js';

/** AWS KMS accepts a deletion waiting period of 7 to 30 days. */
export const minPendingDays = 7;
export const maxPendingDays = 30;

/** Throws a UsageError unless `days` is an integer from 7 to 30. */
export function checkPendingDays(days: number): void {
  if (!Number.isInteger(days) || days < minPendingDays || days > maxPendingDays) {
    throw new UsageError(`invalid --pending-days "${days}": AWS KMS accepts an integer from ${minPendingDays} to ${maxPendingDays}`);
  }
}

/** A KEK that still wraps rows, so that retiring or shredding it would lose data. */
export class KeyInUseError extends Error {
  override name = 'KeyInUseError';
}

export interface RetireOptions {
  kek: string;
  pendingDays?: number | undefined;
  dryRun?: boolean | undefined;
}

export interface RetireResult {
  keyArn: string;
  pendingDays: number;
  dryRun: boolean;
  /** Actions taken, or with `dryRun` the actions that would be taken, in order. */
  actions: string[];
  deletionDate: string | null;
  counts: TableCount[];
}

/**
 * Retires a KEK: DisableKey, then ScheduleKeyDeletion. Throws
 * `KeyInUseError` while any configured table has a row wrapped under it.
 */
export async function retireKey(context: LifecycleContext, options: RetireOptions): Promise<RetireResult> {
  const pendingDays = options.pendingDays ?? maxPendingDays;
  checkPendingDays(pendingDays);
  const metadata = await describeKey(context.kms, options.kek);
  if (metadata?.Arn === undefined) {
    throw new Error(`key "${options.kek}" was not found in the KMS; pass the key id, ARN or alias of an existing key`);
  }
  const keyArn = metadata.Arn;
  const counts = await countRowsOnKek(context.pool, context.tables, keyArn);
  const remaining = totalRows(counts);
  if (remaining > 0) {
    throw new KeyInUseError(
      `refusing to retire ${keyArn}: ${remaining} rows are still wrapped under it (${describeCounts(counts)}); ` +
        `rotate them first with "rewrap rotate --all --to NEW_KEK", then run retire again`,
    );
  }
  if (metadata.KeyState === 'PendingDeletion') {
    throw new Error(`key ${keyArn} is already pending deletion; nothing to do`);
  }

  const actions = [
    metadata.KeyState === 'Disabled' ? `key ${keyArn} is already disabled` : `DisableKey ${keyArn}`,
    `ScheduleKeyDeletion ${keyArn} with a waiting period of ${pendingDays} days`,
  ];
  const dryRun = options.dryRun === true;
  if (dryRun) {
    context.logger.info({ event: 'key.retire.dry-run', keyArn, pendingDays }, 'retire dry run');
    return { keyArn, pendingDays, dryRun, actions, deletionDate: null, counts };
  }

  context.logger.info({ event: 'key.retire.start', keyArn, pendingDays }, 'retiring KEK');
  if (metadata.KeyState !== 'Disabled') await context.kms.send(new DisableKeyCommand({ KeyId: keyArn }));
  const scheduled = await context.kms.send(new ScheduleKeyDeletionCommand({ KeyId: keyArn, PendingWindowInDays: pendingDays }));
  const deletionDate = scheduled.DeletionDate?.toISOString() ?? null;
  await markRetired(context.pool, keyArn, 'tenant', null);
  await context.audit.append('key.retire', { keyArn, pendingDays, deletionDate });
  context.logger.info({ event: 'key.retire.done', keyArn, deletionDate }, 'KEK disabled and scheduled for deletion');
  return { keyArn, pendingDays, dryRun, actions, deletionDate, counts };
}
