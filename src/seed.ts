import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CreateKeyCommand, EncryptCommand, type KMSClient } from '@aws-sdk/client-kms';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { copyHeader, copyTrailer, encodeTuple } from './db/copy-binary.js';
import { rowContext, sealPayload, type EncryptionContext } from './envelope.js';
import type { Logger } from './log.js';

export interface SeedOptions {
  client: pg.ClientBase;
  kms: KMSClient;
  /** Emulator base URL; when set, DEKs are wrapped in bulk through its seeding endpoint instead of one Encrypt each. */
  emulatorUrl?: string | undefined;
  matters: number;
  rows: number;
  /** Prefix of the generated matter ids. */
  matterPrefix?: string;
  /** Plaintext bytes per payload. */
  payloadBytes?: number;
  /** Rows per COPY transaction. */
  chunkRows?: number;
  logger?: Logger | undefined;
}

export interface SeedResult {
  rows: number;
  firstKey: string;
  lastKey: string;
  /** Key ARN per matter id. */
  keks: Map<string, string>;
}

/** Wraps DEKs under one KEK; returns one blob per item, in order. */
type WrapMany = (kekArn: string, items: Array<{ plaintext: Uint8Array; context: EncryptionContext }>) => Promise<Buffer[]>;

/** Most items the emulator's seeding endpoint takes in one call. */
const wrapBatchLimit = 10_000;

function emulatorWrapper(emulatorUrl: string): WrapMany {
  const wrapOnce: WrapMany = async (kekArn, items) => {
    const response = await fetch(new URL('/_emulator/wrap-batch', emulatorUrl), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        KeyId: kekArn,
        Items: items.map((item) => ({ Plaintext: Buffer.from(item.plaintext).toString('base64'), EncryptionContext: item.context })),
      }),
    });
    if (!response.ok) {
      throw new Error(`emulator seeding endpoint returned HTTP ${response.status} for key ${kekArn}; is ${emulatorUrl} a rewrap KMS emulator?`);
    }
    const body = (await response.json()) as { CiphertextBlobs: string[] };
    return body.CiphertextBlobs.map((blob) => Buffer.from(blob, 'base64'));
  };
  return async (kekArn, items) => {
    const blobs: Buffer[] = [];
    for (let start = 0; start < items.length; start += wrapBatchLimit) {
      blobs.push(...(await wrapOnce(kekArn, items.slice(start, start + wrapBatchLimit))));
    }
    return blobs;
  };
}

function kmsWrapper(kms: KMSClient, concurrency = 32): WrapMany {
  return async (kekArn, items) => {
    const blobs: Buffer[] = new Array(items.length);
    let next = 0;
    const lane = async () => {
      while (next < items.length) {
        const index = next++;
        const item = items[index]!;
        const output = await kms.send(new EncryptCommand({ KeyId: kekArn, Plaintext: item.plaintext, EncryptionContext: item.context }));
        if (output.CiphertextBlob === undefined) throw new Error(`Encrypt under ${kekArn} returned no ciphertext`);
        blobs[index] = Buffer.from(output.CiphertextBlob);
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, lane));
    return blobs;
  };
}

/** Creates one KEK per matter id; returns the key ARN per matter. */
export async function createMatterKeys(kms: KMSClient, matters: string[], purpose: string): Promise<Map<string, string>> {
  const keks = new Map<string, string>();
  for (const matter of matters) {
    const output = await kms.send(
      new CreateKeyCommand({
        Description: `rewrap ${purpose} KEK for matter ${matter}`,
        KeyUsage: 'ENCRYPT_DECRYPT',
        KeySpec: 'SYMMETRIC_DEFAULT',
        Tags: [{ TagKey: 'matter', TagValue: matter }, { TagKey: 'rewrap:purpose', TagValue: purpose }],
      }),
    );
    const arn = output.KeyMetadata?.Arn;
    if (arn === undefined) throw new Error(`CreateKey for matter ${matter} returned no ARN`);
    keks.set(matter, arn);
  }
  return keks;
}

/**
 * Fills the default vault with DEKs that really unwrap through the KMS under
 * their row's context, and their payloads sealed under those DEKs. Rows are
 * written with binary COPY, one transaction per chunk; plaintext DEKs are
 * zeroed as soon as their chunk is wrapped and sealed.
 */
export async function seedVault(options: SeedOptions): Promise<SeedResult> {
  const { client, logger } = options;
  if (!Number.isInteger(options.matters) || options.matters < 1) {
    throw new Error(`invalid matter count ${options.matters}: expected a positive integer`);
  }
  if (!Number.isInteger(options.rows) || options.rows < 0) {
    throw new Error(`invalid row count ${options.rows}: expected a non-negative integer`);
  }
  const prefix = options.matterPrefix ?? 'matter-';
  const matterIds = Array.from({ length: options.matters }, (_, i) => `${prefix}${String(i + 1).padStart(4, '0')}`);
  const keks = await createMatterKeys(options.kms, matterIds, 'seed');
  const wrap = options.emulatorUrl !== undefined ? emulatorWrapper(options.emulatorUrl) : kmsWrapper(options.kms);
  const payloadBytes = options.payloadBytes ?? 64;
  const chunkRows = options.chunkRows ?? 20_000;

  const start = await client.query<{ next: string }>('SELECT (COALESCE(max(id), 0) + 1)::text AS next FROM public.vault');
  const firstKey = BigInt(start.rows[0]!.next);
  let written = 0;

  while (written < options.rows) {
    const count = Math.min(chunkRows, options.rows - written);
    const byMatter = new Map<string, number[]>();
    const deks: Buffer[] = [];
    const vaultTuples: Buffer[] = new Array(count);
    const payloadTuples: Buffer[] = new Array(count);
    const blobs: Buffer[] = new Array(count);

    for (let i = 0; i < count; i++) {
      const matter = matterIds[(written + i) % matterIds.length]!;
      const indexes = byMatter.get(matter) ?? [];
      indexes.push(i);
      byMatter.set(matter, indexes);
      deks.push(randomBytes(32));
    }
    try {
      for (const [matter, indexes] of byMatter) {
        const kek = keks.get(matter)!;
        const items = indexes.map((i) => ({ plaintext: deks[i]!, context: rowContext(matter, tokenFor(firstKey + BigInt(written + i))) }));
        const wrapped = await wrap(kek, items);
        indexes.forEach((rowIndex, j) => {
          blobs[rowIndex] = wrapped[j]!;
        });
      }
      for (let i = 0; i < count; i++) {
        const id = firstKey + BigInt(written + i);
        const matter = matterIds[(written + i) % matterIds.length]!;
        const token = tokenFor(id);
        const context = rowContext(matter, token);
        const sealed = sealPayload(deks[i]!, context, randomBytes(payloadBytes));
        vaultTuples[i] = encodeTuple([
          { type: 'int8', value: id },
          { type: 'text', value: matter },
          { type: 'text', value: token },
          { type: 'bytea', value: blobs[i]! },
          { type: 'text', value: keks.get(matter)! },
        ]);
        payloadTuples[i] = encodeTuple([
          { type: 'int8', value: id },
          { type: 'bytea', value: sealed.iv },
          { type: 'bytea', value: sealed.ciphertext },
        ]);
      }
    } finally {
      for (const dek of deks) dek.fill(0);
    }

    await client.query('BEGIN');
    try {
      await copyBinary(client, 'COPY public.vault (id, matter_id, token, wrapped_key, kek_id) FROM STDIN (FORMAT binary)', vaultTuples);
      await copyBinary(client, 'COPY public.vault_payload (id, iv, ciphertext) FROM STDIN (FORMAT binary)', payloadTuples);
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    }
    written += count;
    logger?.debug({ event: 'seed.progress', rows: written }, 'seeded rows');
  }

  logger?.info({ event: 'seed.done', rows: written, matters: matterIds.length }, 'vault seeded');
  return {
    rows: written,
    firstKey: firstKey.toString(),
    lastKey: (firstKey + BigInt(Math.max(0, written - 1))).toString(),
    keks,
  };
}

/** Token of a seeded row: the application's document reference. */
export function tokenFor(id: bigint | string): string {
  return `doc-${id.toString()}`;
}

/** Runs one binary COPY of already encoded tuples. */
export async function copyBinary(client: pg.ClientBase, sql: string, tuples: Buffer[]): Promise<void> {
  const sink = client.query(copyFrom(sql));
  await pipeline(Readable.from([Buffer.concat([copyHeader(), ...tuples, copyTrailer()])]), sink);
}
