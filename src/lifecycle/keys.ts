import { CreateAliasCommand, CreateKeyCommand, ListResourceTagsCommand, type KMSClient } from '@aws-sdk/client-kms';
import type pg from 'pg';
import { UsageError } from '../cli/args.js';
import { describeKey, type LifecycleContext } from './context.js';

export type KeyClass = 'tenant' | 'matter' | 'audit-signing';

/** Matter ids must fit into a KMS alias name. */
const matterIdPattern = /^[a-zA-Z0-9_-]{1,200}$/;

export function matterAlias(matter: string): string {
  return `alias/rewrap/matter/${matter}`;
}

/** Throws a UsageError unless the matter id can be used in an alias name. */
export function checkMatterId(matter: string): void {
  if (!matterIdPattern.test(matter)) {
    throw new UsageError(`invalid matter id "${matter}": use 1 to 200 letters, digits, "_" or "-" so that it fits a KMS alias name`);
  }
}

/** A key rewrap recorded in `rewrap.keys`. */
export interface KeyRecordRow {
  keyArn: string;
  keyClass: KeyClass;
  matter: string | null;
  aliasName: string | null;
  createdAt: Date;
  retiredAt: Date | null;
}

/** Reads the matter's live KEK from `rewrap.keys`; returns null when it has none. */
export async function liveMatterKey(pool: pg.Pool, matter: string): Promise<KeyRecordRow | null> {
  const { rows } = await pool.query<{ key_arn: string; key_class: KeyClass; matter_id: string | null; alias_name: string | null; created_at: Date; retired_at: Date | null }>(
    `SELECT key_arn, key_class, matter_id, alias_name, created_at, retired_at FROM rewrap.keys
     WHERE key_class = 'matter' AND matter_id = $1 AND retired_at IS NULL`,
    [matter],
  );
  const row = rows[0];
  if (row === undefined) return null;
  return { keyArn: row.key_arn, keyClass: row.key_class, matter: row.matter_id, aliasName: row.alias_name, createdAt: row.created_at, retiredAt: row.retired_at };
}

/** Reads every key in `rewrap.keys`, oldest first. */
export async function recordedKeys(pool: pg.Pool): Promise<KeyRecordRow[]> {
  const { rows } = await pool.query<{ key_arn: string; key_class: KeyClass; matter_id: string | null; alias_name: string | null; created_at: Date; retired_at: Date | null }>(
    'SELECT key_arn, key_class, matter_id, alias_name, created_at, retired_at FROM rewrap.keys ORDER BY created_at, key_arn',
  );
  return rows.map((row) => ({
    keyArn: row.key_arn,
    keyClass: row.key_class,
    matter: row.matter_id,
    aliasName: row.alias_name,
    createdAt: row.created_at,
    retiredAt: row.retired_at,
  }));
}

/** Marks a recorded key retired, inserting its record when rewrap never recorded it. */
export async function markRetired(pool: pg.Pool, keyArn: string, keyClass: KeyClass, matter: string | null): Promise<void> {
  await pool.query(
    `INSERT INTO rewrap.keys (key_arn, key_class, matter_id, retired_at) VALUES ($1, $2, $3, now())
     ON CONFLICT (key_arn) DO UPDATE SET retired_at = COALESCE(rewrap.keys.retired_at, now())`,
    [keyArn, keyClass, matter],
  );
}

/**
 * Returns the matter a KEK is dedicated to: its `rewrap.keys` record, or
 * else its `matter` tag in the KMS. Null for a key shared by many matters.
 */
export async function dedicatedMatter(pool: pg.Pool, kms: KMSClient, keyArn: string): Promise<string | null> {
  const { rows } = await pool.query<{ matter_id: string | null }>(
    `SELECT matter_id FROM rewrap.keys WHERE key_arn = $1 AND key_class = 'matter'`,
    [keyArn],
  );
  if (rows[0]?.matter_id !== undefined && rows[0].matter_id !== null) return rows[0].matter_id;
  try {
    const tags = (await kms.send(new ListResourceTagsCommand({ KeyId: keyArn }))).Tags ?? [];
    return tags.find((tag) => tag.TagKey === 'matter')?.TagValue ?? null;
  } catch (error) {
    if ((error as Error).name === 'NotFoundException') return null;
    throw error;
  }
}

export interface CreatedKey {
  keyArn: string;
  aliasName: string;
  matter: string;
}

/**
 * Creates a KEK dedicated to one matter: CreateKey tagged `matter=M`, the
 * alias `alias/rewrap/matter/M`, and a record in `rewrap.keys`. Throws when
 * the matter already has a live KEK.
 */
export async function createMatterKey(context: LifecycleContext, matter: string): Promise<CreatedKey> {
  checkMatterId(matter);
  const existing = await liveMatterKey(context.pool, matter);
  if (existing !== null) {
    throw new Error(`matter ${matter} already has KEK ${existing.keyArn}; rotate to it, or retire it with "rewrap retire --kek ${existing.keyArn}" first`);
  }
  const aliasName = matterAlias(matter);
  const created = await context.kms.send(
    new CreateKeyCommand({
      Description: `rewrap KEK for matter ${matter}`,
      KeyUsage: 'ENCRYPT_DECRYPT',
      KeySpec: 'SYMMETRIC_DEFAULT',
      Tags: [
        { TagKey: 'matter', TagValue: matter },
        { TagKey: 'rewrap:purpose', TagValue: 'matter' },
      ],
    }),
  );
  const keyArn = created.KeyMetadata?.Arn;
  if (keyArn === undefined) throw new Error(`CreateKey for matter ${matter} returned no ARN`);
  await context.kms.send(new CreateAliasCommand({ AliasName: aliasName, TargetKeyId: keyArn }));
  await context.pool.query(`INSERT INTO rewrap.keys (key_arn, key_class, matter_id, alias_name) VALUES ($1, 'matter', $2, $3)`, [
    keyArn,
    matter,
    aliasName,
  ]);
  context.logger.info({ event: 'key.create', keyArn, matter, alias: aliasName }, 'created matter KEK');
  await context.audit.append('key.create', { keyArn, matter, alias: aliasName });
  return { keyArn, aliasName, matter };
}

export interface ListedKey {
  keyArn: string;
  keyClass: KeyClass;
  matter: string | null;
  aliasName: string | null;
  /** KeyState from DescribeKey, or NotFound when the KMS no longer has the key. */
  state: string;
  createdAt: string;
  ageDays: number;
  retiredAt: string | null;
}

/** Lists the keys in `rewrap.keys` with their KMS state and age (from CreationDate, else the record). */
export async function listKeys(context: LifecycleContext, now = new Date()): Promise<ListedKey[]> {
  const listed: ListedKey[] = [];
  for (const record of await recordedKeys(context.pool)) {
    const metadata = await describeKey(context.kms, record.keyArn);
    const created = metadata?.CreationDate ?? record.createdAt;
    listed.push({
      keyArn: record.keyArn,
      keyClass: record.keyClass,
      matter: record.matter,
      aliasName: record.aliasName,
      state: metadata?.KeyState ?? 'NotFound',
      createdAt: created.toISOString(),
      ageDays: Math.floor(((now.getTime() - created.getTime()) / 86_400_000) * 10) / 10,
      retiredAt: record.retiredAt?.toISOString() ?? null,
    });
  }
  return listed;
}
