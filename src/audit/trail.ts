import { createHash } from 'node:crypto';
import { CreateAliasCommand, CreateKeyCommand, GenerateMacCommand, type KMSClient, VerifyMacCommand } from '@aws-sdk/client-kms';
import type pg from 'pg';
import type { Logger } from '../log.js';

/** `prev_hash` of the first record. */
export const genesisHash = '0'.repeat(64);

/** Alias given to the HMAC key that signs audit records when rewrap creates it. */
export const auditKeyAlias = 'alias/rewrap/audit';

/** One stored audit record. `seq` starts at 1 and has no gaps. */
export interface AuditRecord {
  seq: number;
  recordedAt: string;
  action: string;
  actor: string;
  details: Record<string, unknown>;
  prevHash: string;
  hash: string;
  /** Base64 HMAC-SHA-256 from KMS GenerateMac over the record's hash. */
  mac: string;
  /** ARN of the HMAC key that produced `mac`. */
  macKeyArn: string;
}

/** Result of `verify`: `firstBroken` names the first record that fails, with the reason. */
export interface AuditVerification {
  ok: boolean;
  records: number;
  headSeq: number | null;
  firstBroken?: { seq: number; reason: string };
}

/** Serialises a JSON value with object keys sorted at every level, so that jsonb's key order does not change the hash. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.keys(value as Record<string, unknown>)
      .sort()
      .filter((key) => (value as Record<string, unknown>)[key] !== undefined)
      .map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`);
    return `{${entries.join(',')}}`;
  }
  return JSON.stringify(value);
}

/** SHA-256 (hex) over every field of a record except its hash and MAC. */
export function recordHash(record: Omit<AuditRecord, 'hash' | 'mac'>): string {
  const body = canonicalJson([record.seq, record.recordedAt, record.action, record.actor, record.details, record.prevHash, record.macKeyArn]);
  return createHash('sha256').update(body).digest('hex');
}

const recordMacMessage = (hash: string) => Buffer.from(`rewrap.audit.record|${hash}`, 'utf8');
const headMacMessage = (seq: number, hash: string) => Buffer.from(`rewrap.audit.head|${seq}|${hash}`, 'utf8');

interface AuditRow {
  seq: string;
  recorded_at: Date;
  action: string;
  actor: string;
  details: Record<string, unknown>;
  prev_hash: string;
  hash: string;
  mac: string;
  mac_key_arn: string;
}

function fromRow(row: AuditRow): AuditRecord {
  return {
    seq: Number(row.seq),
    recordedAt: row.recorded_at.toISOString(),
    action: row.action,
    actor: row.actor,
    details: row.details,
    prevHash: row.prev_hash,
    hash: row.hash,
    mac: row.mac,
    macKeyArn: row.mac_key_arn,
  };
}

export interface AuditTrailOptions {
  pool: pg.Pool;
  kms: KMSClient;
  logger: Logger;
  /** Actor named by the records; the KMS access key id by default. */
  actor?: string | undefined;
}

/**
 * The hash-chained, KMS-MACed audit trail in `rewrap.audit`.
 *
 * Each record carries the previous record's hash and a GenerateMac over its
 * own hash. A separate head row (`rewrap.audit_head`) stores the last
 * sequence number and hash under its own MAC, so that deleting records from
 * the end is detected too. Appends are serialised by an advisory lock.
 *
 * NOTE: a head row saved earlier and written back together with a truncated
 * table passes verification. Copy the head (`audit export` prints it last)
 * to storage that the database's writers cannot change to rule that out.
 */
export class AuditTrail {
  private readonly pool: pg.Pool;
  private readonly kms: KMSClient;
  private readonly logger: Logger;
  private actor: string | undefined;

  constructor(options: AuditTrailOptions) {
    this.pool = options.pool;
    this.kms = options.kms;
    this.logger = options.logger;
    this.actor = options.actor;
  }

  /** Appends one record and moves the head to it. Returns the stored record. */
  async append(action: string, details: Record<string, unknown>): Promise<AuditRecord> {
    const actor = await this.resolveActor();
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', ['rewrap.audit']);
      const macKeyArn = await this.signingKey(client);
      const head = await client.query<{ seq: string; hash: string }>('SELECT seq::text, hash FROM rewrap.audit_head');
      const seq = head.rows[0] === undefined ? 1 : Number(head.rows[0].seq) + 1;
      const prevHash = head.rows[0]?.hash ?? genesisHash;
      const recordedAt = new Date().toISOString();
      // A JSON round trip drops undefined fields and turns the details into what jsonb stores.
      const stored = JSON.parse(JSON.stringify(details)) as Record<string, unknown>;
      const unsigned = { seq, recordedAt, action, actor, details: stored, prevHash, macKeyArn };
      const hash = recordHash(unsigned);
      const mac = await this.generateMac(macKeyArn, recordMacMessage(hash));
      const headMac = await this.generateMac(macKeyArn, headMacMessage(seq, hash));
      await client.query(
        `INSERT INTO rewrap.audit (seq, recorded_at, action, actor, details, prev_hash, hash, mac, mac_key_arn)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
        [seq, recordedAt, action, actor, JSON.stringify(stored), prevHash, hash, mac, macKeyArn],
      );
      await client.query(
        `INSERT INTO rewrap.audit_head (singleton, seq, hash, mac, mac_key_arn) VALUES (true, $1, $2, $3, $4)
         ON CONFLICT (singleton) DO UPDATE SET seq = $1, hash = $2, mac = $3, mac_key_arn = $4, updated_at = now()`,
        [seq, hash, headMac, macKeyArn],
      );
      await client.query('COMMIT');
      this.logger.info({ event: 'audit.append', seq, action, macKeyArn }, 'audit record appended');
      return { ...unsigned, hash, mac };
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      this.logger.error({ event: 'audit.append.error', action, err: error }, 'appending an audit record failed');
      throw error;
    } finally {
      client.release();
    }
  }

  /** Reads every record in sequence order. */
  async records(): Promise<AuditRecord[]> {
    const { rows } = await this.pool.query<AuditRow>(
      // Ordered by the bigint column: the text alias "seq" would sort 10 before 2.
      'SELECT a.seq::text AS seq, recorded_at, action, actor, details, prev_hash, hash, mac, mac_key_arn FROM rewrap.audit a ORDER BY a.seq',
    );
    return rows.map(fromRow);
  }

  /** Reads the head row, or null when no record was ever appended. */
  async head(): Promise<{ seq: number; hash: string; mac: string; macKeyArn: string } | null> {
    const { rows } = await this.pool.query<{ seq: string; hash: string; mac: string; mac_key_arn: string }>(
      'SELECT seq::text, hash, mac, mac_key_arn FROM rewrap.audit_head',
    );
    const row = rows[0];
    return row === undefined ? null : { seq: Number(row.seq), hash: row.hash, mac: row.mac, macKeyArn: row.mac_key_arn };
  }

  /**
   * Checks the sequence, the hash chain, every record's MAC and the head.
   * Sends one VerifyMac per record plus one for the head.
   */
  async verify(): Promise<AuditVerification> {
    const records = await this.records();
    const head = await this.head();
    const result = (firstBroken?: { seq: number; reason: string }): AuditVerification => {
      const verification: AuditVerification = { ok: firstBroken === undefined, records: records.length, headSeq: head?.seq ?? null };
      if (firstBroken !== undefined) verification.firstBroken = firstBroken;
      return verification;
    };

    let expectedPrev = genesisHash;
    let expectedSeq = 1;
    for (const record of records) {
      if (record.seq !== expectedSeq) {
        return result({ seq: expectedSeq, reason: `record ${expectedSeq} is missing: the next stored record is ${record.seq}` });
      }
      if (record.prevHash !== expectedPrev) {
        return result({ seq: record.seq, reason: `prev_hash does not match the hash of record ${record.seq - 1}; records were removed or reordered` });
      }
      if (recordHash(record) !== record.hash) {
        return result({ seq: record.seq, reason: 'the record\'s fields do not match its hash; the record was edited' });
      }
      if (!(await this.verifyMac(record.macKeyArn, recordMacMessage(record.hash), record.mac))) {
        return result({ seq: record.seq, reason: `the MAC does not verify under ${record.macKeyArn}; the hash was rewritten` });
      }
      expectedPrev = record.hash;
      expectedSeq += 1;
    }

    const last = records[records.length - 1];
    if (head === null) {
      return last === undefined ? result() : result({ seq: 1, reason: 'the head row is missing although records exist' });
    }
    if (!(await this.verifyMac(head.macKeyArn, headMacMessage(head.seq, head.hash), head.mac))) {
      return result({ seq: head.seq, reason: 'the head row\'s MAC does not verify; the head was edited' });
    }
    if (last === undefined || head.seq > last.seq) {
      const firstMissing = (last?.seq ?? 0) + 1;
      return result({ seq: firstMissing, reason: `the head names record ${head.seq} but the trail ends at ${last?.seq ?? 0}; the tail was truncated` });
    }
    if (head.seq !== last.seq || head.hash !== last.hash) {
      return result({ seq: head.seq, reason: `the head (record ${head.seq}) does not match the last record ${last.seq}` });
    }
    return result();
  }

  private async resolveActor(): Promise<string> {
    if (this.actor === undefined) {
      const credentials = await this.kms.config.credentials();
      this.actor = credentials.accessKeyId;
    }
    return this.actor;
  }

  /** Returns the live audit signing key from `rewrap.keys`, creating and recording one on first use. */
  private async signingKey(client: pg.PoolClient): Promise<string> {
    const existing = await client.query<{ key_arn: string }>(
      `SELECT key_arn FROM rewrap.keys WHERE key_class = 'audit-signing' AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1`,
    );
    if (existing.rows[0] !== undefined) return existing.rows[0].key_arn;

    const created = await this.kms.send(
      new CreateKeyCommand({
        KeySpec: 'HMAC_256',
        KeyUsage: 'GENERATE_VERIFY_MAC',
        Description: 'rewrap audit trail signing key',
        Tags: [{ TagKey: 'rewrap:purpose', TagValue: 'audit-signing' }],
      }),
    );
    const arn = created.KeyMetadata?.Arn;
    if (arn === undefined) throw new Error('CreateKey for the audit signing key returned no ARN');
    let aliasName: string | null = auditKeyAlias;
    try {
      await this.kms.send(new CreateAliasCommand({ AliasName: auditKeyAlias, TargetKeyId: arn }));
    } catch (error) {
      // An alias left over from an earlier signing key is not needed to sign; the ARN is recorded.
      this.logger.warn({ event: 'audit.alias.error', keyArn: arn, alias: auditKeyAlias, err: error }, 'could not create the audit key alias');
      aliasName = null;
    }
    await client.query(`INSERT INTO rewrap.keys (key_arn, key_class, alias_name) VALUES ($1, 'audit-signing', $2)`, [arn, aliasName]);
    this.logger.info({ event: 'audit.key.create', keyArn: arn }, 'created the audit signing key');
    return arn;
  }

  private async generateMac(keyArn: string, message: Buffer): Promise<string> {
    const output = await this.kms.send(new GenerateMacCommand({ KeyId: keyArn, Message: message, MacAlgorithm: 'HMAC_SHA_256' }));
    if (output.Mac === undefined) throw new Error(`GenerateMac under ${keyArn} returned no MAC`);
    return Buffer.from(output.Mac).toString('base64');
  }

  private async verifyMac(keyArn: string, message: Buffer, mac: string): Promise<boolean> {
    try {
      const output = await this.kms.send(
        new VerifyMacCommand({ KeyId: keyArn, Message: message, Mac: Buffer.from(mac, 'base64'), MacAlgorithm: 'HMAC_SHA_256' }),
      );
      return output.MacValid === true;
    } catch (error) {
      const name = (error as Error).name;
      if (name === 'KMSInvalidMacException' || name === 'ValidationException') return false;
      throw error;
    }
  }
}
