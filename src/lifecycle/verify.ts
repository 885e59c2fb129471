import { DecryptCommand } from '@aws-sdk/client-kms';
import { rowContext } from '../envelope.js';
import { resolveKeyArn, type LifecycleContext } from './context.js';
import { dedicatedMatter } from './keys.js';
import { countRowsOnKek, sampleRows, totalRows, type TableCount } from './rows.js';

export interface VerifyOptions {
  /** Matters to check; null checks every matter. */
  matters: string[] | null;
  /** The old KEK that no row may be wrapped under any more. */
  kek: string;
  /** Rows unwrapped per table, 100 by default. */
  sample?: number | undefined;
}

export interface SampleFailure {
  table: string;
  key: string;
  matter: string;
  kekArn: string;
  /** KMS error name, or CrossMatterKek when the row's KEK is dedicated to another matter. */
  error: string;
}

export interface VerifyResult {
  ok: boolean;
  kekArn: string;
  remaining: TableCount[];
  sampled: number;
  failures: SampleFailure[];
}

/**
 * Checks that no row of the scope is still wrapped under the old KEK, then
 * unwraps a random sample through KMS Decrypt, with KeyId set to the row's
 * KEK and the row's own encryption context. A sampled row whose KEK is
 * dedicated to a different matter fails as CrossMatterKek: rewrap never
 * moves a matter's DEKs under another matter's KEK without an explicit
 * override (see `plan`).
 */
export async function verifyRotation(context: LifecycleContext, options: VerifyOptions): Promise<VerifyResult> {
  const kekArn = await resolveKeyArn(context.kms, options.kek);
  const sampleSize = options.sample ?? 100;
  context.logger.info({ event: 'verify.start', kekArn, matters: options.matters ?? 'all', sample: sampleSize }, 'verifying rotation');

  const remaining = await countRowsOnKek(context.pool, context.tables, kekArn, options.matters);
  const rows = sampleSize > 0 ? await sampleRows(context.pool, context.tables, options.matters, sampleSize) : [];
  const failures: SampleFailure[] = [];
  const dedicated = new Map<string, string | null>();
  for (const row of rows) {
    if (!dedicated.has(row.kekArn)) dedicated.set(row.kekArn, await dedicatedMatter(context.pool, context.kms, row.kekArn));
    const owner = dedicated.get(row.kekArn) ?? null;
    if (owner !== null && owner !== row.matter) {
      failures.push({ table: row.table, key: row.key, matter: row.matter, kekArn: row.kekArn, error: 'CrossMatterKek' });
      continue;
    }
    try {
      const output = await context.kms.send(
        new DecryptCommand({ CiphertextBlob: row.wrappedKey, KeyId: row.kekArn, EncryptionContext: rowContext(row.matter, row.token) }),
      );
      output.Plaintext?.fill(0);
    } catch (error) {
      const name = (error as Error).name;
      context.logger.warn({ event: 'verify.unwrap.error', table: row.table, key: row.key, kekArn: row.kekArn, error: name }, 'sampled row did not unwrap');
      failures.push({ table: row.table, key: row.key, matter: row.matter, kekArn: row.kekArn, error: name });
    }
  }
  const ok = totalRows(remaining) === 0 && failures.length === 0;
  await context.audit.append('rotation.verify', {
    kekArn,
    matters: options.matters ?? 'all',
    ok,
    remaining: totalRows(remaining),
    sampled: rows.length,
    failed: failures.length,
  });
  context.logger.info({ event: 'verify.done', kekArn, ok, remaining: totalRows(remaining), sampled: rows.length, failed: failures.length }, 'verification finished');
  return { ok, kekArn, remaining, sampled: rows.length, failures };
}
