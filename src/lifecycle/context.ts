import { DescribeKeyCommand, type KeyMetadata, type KMSClient } from '@aws-sdk/client-kms';
import pg from 'pg';
import { AuditTrail } from '../audit/trail.js';
import { initSchema } from '../db/schema.js';
import { defaultVaultTable, type VaultTable } from '../db/table.js';
import { createKmsClient } from '../kms/client.js';
import type { Logger } from '../log.js';

/** Database pool, KMS client, vault tables and audit trail shared by the lifecycle commands. */
export interface LifecycleContext {
  databaseUrl: string;
  pool: pg.Pool;
  kms: KMSClient;
  kmsEndpoint: string | undefined;
  kmsRegion: string | undefined;
  /** Vault tables whose rows are checked and rewrapped; `public.vault` by default. */
  tables: VaultTable[];
  audit: AuditTrail;
  logger: Logger;
  close(): Promise<void>;
}

export interface LifecycleContextOptions {
  databaseUrl: string;
  kmsEndpoint?: string | undefined;
  kmsRegion?: string | undefined;
  tables?: VaultTable[] | undefined;
  logger: Logger;
}

/** Connects to the database and the KMS and applies pending schema migrations. */
export async function openLifecycleContext(options: LifecycleContextOptions): Promise<LifecycleContext> {
  const pool = new pg.Pool({ connectionString: options.databaseUrl, max: 4 });
  pool.on('error', (error) => options.logger.warn({ event: 'db.pool.error', err: error }, 'idle database connection failed'));
  // Lifecycle calls (audit MACs, verify samples, key management) share the
  // quota with rotations, so the SDK retries them when throttled.
  const kms = createKmsClient({ endpoint: options.kmsEndpoint, region: options.kmsRegion, maxAttempts: 4 });
  try {
    const client = await pool.connect();
    try {
      await initSchema(client, options.logger);
    } finally {
      client.release();
    }
  } catch (error) {
    kms.destroy();
    await pool.end();
    throw error;
  }
  return {
    databaseUrl: options.databaseUrl,
    pool,
    kms,
    kmsEndpoint: options.kmsEndpoint,
    kmsRegion: options.kmsRegion,
    tables: options.tables === undefined || options.tables.length === 0 ? [defaultVaultTable] : options.tables,
    audit: new AuditTrail({ pool, kms, logger: options.logger }),
    logger: options.logger,
    async close() {
      kms.destroy();
      await pool.end();
    },
  };
}

/** Returns the access key id that this context's KMS client signs with, which the emulator treats as the principal. */
export async function kmsPrincipal(kms: KMSClient): Promise<string> {
  return (await kms.config.credentials()).accessKeyId;
}

/** Looks up a key's metadata; returns null when the KMS has no such key. */
export async function describeKey(kms: KMSClient, reference: string): Promise<KeyMetadata | null> {
  try {
    return (await kms.send(new DescribeKeyCommand({ KeyId: reference }))).KeyMetadata ?? null;
  } catch (error) {
    if ((error as Error).name === 'NotFoundException') return null;
    throw error;
  }
}

/**
 * Resolves a key id, ARN or alias to the key ARN that vault rows store in
 * their KEK column. A key the KMS no longer has is returned as given, so
 * that rows still naming it can be counted.
 */
export async function resolveKeyArn(kms: KMSClient, reference: string): Promise<string> {
  const metadata = await describeKey(kms, reference);
  return metadata?.Arn ?? reference;
}
