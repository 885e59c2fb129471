import { ScheduleKeyDeletionCommand } from '@aws-sdk/client-kms';
import { describeKey, type LifecycleContext } from './context.js';
import { checkMatterId, liveMatterKey, markRetired } from './keys.js';
import { checkPendingDays, KeyInUseError, maxPendingDays } from './retire.js';
import { keksOfMatter, mattersOnKek } from './rows.js';

export interface ShredOptions {
  matter: string;
  pendingDays?: number | undefined;
}

export interface ShredResult {
  matter: string;
  keyArn: string;
  deletionDate: string | null;
}

/**
 * Crypto-shreds a matter: schedules deletion of its KEK and records the
 * matter in `rewrap.shredded_matters`. Once the KMS deletes the key, no DEK
 * of the matter can be unwrapped again. Throws `KeyInUseError` when the KEK
 * also wraps another matter's DEKs, or when rows of the matter are wrapped
 * under a key other than its recorded KEK.
 */
export async function shredMatter(context: LifecycleContext, options: ShredOptions): Promise<ShredResult> {
  const { matter } = options;
  checkMatterId(matter);
  const pendingDays = options.pendingDays ?? maxPendingDays;
  checkPendingDays(pendingDays);

  let keyArn = (await liveMatterKey(context.pool, matter))?.keyArn;
  const keks = await keksOfMatter(context.pool, context.tables, matter);
  if (keyArn !== undefined) {
    // Deleting the recorded KEK shreds nothing while the matter's rows are wrapped under another key.
    const stray = keks.filter((kek) => kek !== keyArn);
    if (stray.length > 0) {
      throw new KeyInUseError(
        `refusing to shred matter ${matter}: some of its rows are wrapped under ${stray.join(', ')}, not its recorded KEK ${keyArn}; ` +
          `rotate them first with "rewrap rotate --matter ${matter} --to ${keyArn}", then shred again`,
      );
    }
  } else {
    if (keks.length === 0) {
      throw new Error(`matter ${matter} has no KEK: it is not in rewrap.keys and no row of it is in ${context.tables.map((t) => t.name).join(', ')}`);
    }
    if (keks.length > 1) {
      throw new Error(`matter ${matter} is wrapped under ${keks.length} KEKs (${keks.join(', ')}); rotate it to one KEK first, then shred`);
    }
    keyArn = keks[0]!;
  }

  const matters = await mattersOnKek(context.pool, context.tables, keyArn);
  const others = matters.filter((other) => other !== matter);
  if (others.length > 0) {
    throw new KeyInUseError(
      `refusing to shred matter ${matter}: its KEK ${keyArn} also wraps the DEKs of ${others.length} other matters (${others.slice(0, 5).join(', ')}); ` +
        `rotate matter ${matter} to a dedicated KEK ("rewrap keys create --matter ${matter}", then "rewrap rotate --matter ${matter} --to alias/rewrap/matter/${matter}") and shred again`,
    );
  }

  const metadata = await describeKey(context.kms, keyArn);
  if (metadata === null) throw new Error(`KEK ${keyArn} of matter ${matter} was not found in the KMS; it may be deleted already`);
  context.logger.info({ event: 'matter.shred.start', matter, keyArn, pendingDays }, 'shredding matter');
  let deletionDate: string | null = metadata.DeletionDate?.toISOString() ?? null;
  if (metadata.KeyState !== 'PendingDeletion') {
    const scheduled = await context.kms.send(new ScheduleKeyDeletionCommand({ KeyId: keyArn, PendingWindowInDays: pendingDays }));
    deletionDate = scheduled.DeletionDate?.toISOString() ?? null;
  }
  await markRetired(context.pool, keyArn, 'matter', matter);
  await context.pool.query(
    `INSERT INTO rewrap.shredded_matters (matter_id, kek_arn, deletion_date) VALUES ($1, $2, $3)
     ON CONFLICT (matter_id) DO UPDATE SET kek_arn = $2, deletion_date = $3`,
    [matter, keyArn, deletionDate],
  );
  await context.audit.append('matter.shred', { matter, keyArn, pendingDays, deletionDate });
  context.logger.info({ event: 'matter.shred.done', matter, keyArn, deletionDate }, 'matter shredded');
  return { matter, keyArn, deletionDate };
}
